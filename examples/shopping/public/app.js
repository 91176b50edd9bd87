// Shared shopping list UI: the official Convex browser client (global
// `convex` from /convex.bundle.js) talking to Tape at this page's origin.
//
// Stable hooks for browser tests:
//   #new-list, #add-list                    create a list (it becomes selected)
//   [data-testid=list] (data-list-id, data-list-name; .selected when current)
//   #current-list-name                      name of the selected list
//   #new-item, #add-item                    add an item to the selected list
//   [data-testid=item] (data-item-id, .done when checked) containing
//     [data-testid=item-text], [data-testid=item-toggle] (checkbox),
//     [data-testid=item-remove] (button)
//   #error                                  last error code, e.g. "EMPTY_TEXT"
//   #status[data-state=connected|connecting]
//   body[data-ready=true]                   once the first lists result arrived
// The selected list is kept in location.hash ("#list=<id>"), so a second
// page opened on the same URL shows the same list.
(function () {
  "use strict";

  const client = new convex.ConvexClient(location.origin);
  const $ = (id) => document.getElementById(id);

  let lists = [];
  let selectedId = null;
  let unsubscribeItems = null;

  function showError(err) {
    if (!err) {
      $("error").textContent = "";
      return;
    }
    const code = err.data && typeof err.data === "object" && err.data.code;
    $("error").textContent = code || err.message || String(err);
  }

  // --- connection status ------------------------------------------------------
  client.subscribeToConnectionState((state) => {
    const connected = state.isWebSocketConnected;
    $("status").dataset.state = connected ? "connected" : "connecting";
    $("status").textContent = connected ? "connected" : "connecting…";
  });

  // --- lists --------------------------------------------------------------------
  function renderLists() {
    const ul = $("lists");
    ul.replaceChildren();
    for (const list of lists) {
      const li = document.createElement("li");
      li.setAttribute("data-testid", "list");
      li.dataset.listId = list._id;
      li.dataset.listName = list.name;
      if (list._id === selectedId) li.classList.add("selected");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = list.name;
      button.addEventListener("click", () => selectList(list._id));
      li.append(button);
      ul.append(li);
    }
    $("no-lists").hidden = lists.length > 0;
    renderHeading();
  }

  function renderHeading() {
    const current = lists.find((l) => l._id === selectedId);
    $("current-list-name").textContent = current ? current.name : "Pick or create a list";
    const enabled = Boolean(current);
    $("new-item").disabled = !enabled;
    $("add-item").disabled = !enabled;
  }

  function listIdFromHash() {
    const match = /^#list=(.+)$/.exec(location.hash);
    return match ? decodeURIComponent(match[1]) : null;
  }

  client.onUpdate(
    "lists:all",
    {},
    (value) => {
      lists = value;
      if (selectedId === null) {
        const fromHash = listIdFromHash();
        if (fromHash && lists.some((l) => l._id === fromHash)) selectList(fromHash);
      } else if (!lists.some((l) => l._id === selectedId)) {
        selectList(null);
      }
      renderLists();
      document.body.dataset.ready = "true";
    },
    (err) => showError(err),
  );

  // Pasting another "#list=<id>" URL into this tab switches to that list.
  window.addEventListener("hashchange", () => {
    const fromHash = listIdFromHash();
    if (fromHash && fromHash !== selectedId && lists.some((l) => l._id === fromHash)) selectList(fromHash);
  });

  $("new-list-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("new-list");
    const name = input.value;
    showError(null);
    try {
      const id = await client.mutation("lists:create", { name });
      input.value = "";
      selectList(id);
    } catch (err) {
      showError(err);
    }
  });

  // --- items --------------------------------------------------------------------
  function selectList(id) {
    if (id === selectedId) return;
    selectedId = id;
    if (unsubscribeItems) {
      unsubscribeItems();
      unsubscribeItems = null;
    }
    $("items").replaceChildren();
    $("no-items").hidden = true;
    showError(null);
    history.replaceState(null, "", id ? `#list=${encodeURIComponent(id)}` : location.pathname);
    renderLists();
    if (id) {
      unsubscribeItems = client.onUpdate(
        "items:list",
        { list_id: id },
        (items) => {
          if (id === selectedId) renderItems(items);
        },
        (err) => showError(err),
      );
    }
  }

  function renderItems(items) {
    const ul = $("items");
    ul.replaceChildren();
    for (const item of items) {
      const li = document.createElement("li");
      li.setAttribute("data-testid", "item");
      li.dataset.itemId = item._id;
      if (item.done) li.classList.add("done");

      const checkbox = document.createElement("input");
      checkbox.type = "checkbox";
      checkbox.checked = item.done;
      checkbox.setAttribute("data-testid", "item-toggle");
      checkbox.setAttribute("aria-label", `Done: ${item.text}`);
      checkbox.addEventListener("change", () => {
        showError(null);
        client.mutation("items:toggle", { id: item._id }).catch(showError);
      });

      const text = document.createElement("span");
      text.setAttribute("data-testid", "item-text");
      text.textContent = item.text;

      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.title = `Remove ${item.text}`;
      remove.setAttribute("data-testid", "item-remove");
      remove.setAttribute("aria-label", `Remove ${item.text}`);
      remove.addEventListener("click", () => {
        showError(null);
        client.mutation("items:remove", { id: item._id }).catch(showError);
      });

      li.append(checkbox, text, remove);
      ul.append(li);
    }
    $("no-items").hidden = items.length > 0;
  }

  $("new-item-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!selectedId) return;
    const input = $("new-item");
    showError(null);
    try {
      await client.mutation("items:add", { list_id: selectedId, text: input.value });
      input.value = "";
    } catch (err) {
      showError(err);
    }
  });

  window.shopping = { client, selectList };
})();
