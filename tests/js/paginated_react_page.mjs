// paginated_react_page.mjs - a React page on the official `usePaginatedQuery`, bundled with esbuild by
// tests/gateway/test_pagination_browser.py and served from a copy of the feed test app's public/.
//
// Shows `feed:list` newest first (3 per page) as <li> elements whose text is the message id, the
// hook's status in #status, and loads 3 more with #more. Every render that would show a row twice
// is counted in window.duplicateRenders.
import React from "react";
import { createRoot } from "react-dom/client";
import { ConvexProvider, ConvexReactClient, usePaginatedQuery } from "convex/react";

const h = React.createElement;
const client = new ConvexReactClient(location.origin, { unsavedChangesWarning: false });
window.duplicateRenders = 0;

function Feed() {
  const { results, status, loadMore } = usePaginatedQuery("feed:list", {}, { initialNumItems: 3 });
  const ids = results.map((m) => m._id);
  if (new Set(ids).size !== ids.length) window.duplicateRenders += 1;
  return h(
    "div",
    null,
    h("p", { id: "status" }, status),
    h("ul", { id: "feed" }, results.map((m) => h("li", { key: m._id, "data-rank": m.rank }, m._id))),
    h("button", { id: "more", onClick: () => loadMore(3) }, "more"),
  );
}

createRoot(document.getElementById("root")).render(h(ConvexProvider, { client }, h(Feed)));
