// A live search box on the official Convex browser client: every keystroke re-subscribes
// messages:search; results update as messages are posted (from this page or any other).
// Hooks for tests: #q (search box), #results li[data-testid=result], #body + #send, #error,
// body[data-ready=true] once the first result arrived.
(function () {
  "use strict";
  const client = new convex.ConvexClient(location.origin);
  const $ = (id) => document.getElementById(id);
  let unsubscribe = null;

  function render(bodies) {
    const ul = $("results");
    ul.replaceChildren(...bodies.map((text) => {
      const li = document.createElement("li");
      li.dataset.testid = "result";
      li.textContent = text;
      return li;
    }));
    document.body.dataset.ready = "true";
  }

  function search() {
    if (unsubscribe) unsubscribe();
    unsubscribe = client.onUpdate("messages:search", { text: $("q").value }, render,
                                  (err) => { $("error").textContent = String(err); });
  }

  $("q").addEventListener("input", search);
  $("post").addEventListener("submit", async (event) => {
    event.preventDefault();
    await client.mutation("messages:send", { body: $("body").value, channel: "web" });
    $("body").value = "";
  });
  search();
})();
