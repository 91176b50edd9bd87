// auth_react_page.mjs - a tiny React page on ConvexReactClient.setAuth, bundled with esbuild by
// tests/gateway/test_auth_browser.py and served from the auth test app's public/ directory.
//
// Query string: ?issuer=<test issuer URL>&sub=<user>&name=<display name>. The page fetches its
// tokens from the issuer's /token endpoint (as an app asks its identity provider), shows
// `whoami:me` in #me and `whoami:mine` in #mine, posts a note with #post, logs out with
// #logout (clearAuth), and reports setAuth's onChange in #auth.
import React from "react";
import { createRoot } from "react-dom/client";
import { ConvexProvider, ConvexReactClient, useMutation, useQuery } from "convex/react";

const h = React.createElement;
const params = new URLSearchParams(location.search);
const issuer = params.get("issuer");
const sub = params.get("sub");
const name = params.get("name") ?? sub;

const client = new ConvexReactClient(location.origin, { unsavedChangesWarning: false });
window.tokenFetches = 0;
client.setAuth(
  async () => {
    window.tokenFetches += 1;
    const response = await fetch(`${issuer}/token?sub=${encodeURIComponent(sub)}&name=${encodeURIComponent(name)}`);
    return await response.text();
  },
  (isAuthenticated) => {
    document.getElementById("auth").textContent = String(isAuthenticated);
  },
);

function App() {
  const me = useQuery("whoami:me");
  const mine = useQuery("whoami:mine");
  const post = useMutation("whoami:post");
  const who = me === undefined ? "loading" : me === null ? "anonymous" : `${me.name} <${me.tokenIdentifier}>`;
  return h(
    "div",
    null,
    h("p", { id: "me" }, who),
    h("ul", { id: "mine" }, (mine ?? []).map((text, i) => h("li", { key: i }, text))),
    h("button", { id: "post", onClick: () => void post({ text: `note of ${sub}` }) }, "post"),
    h("button", { id: "logout", onClick: () => client.clearAuth() }, "log out"),
  );
}

createRoot(document.getElementById("root")).render(h(ConvexProvider, { client }, h(App)));
