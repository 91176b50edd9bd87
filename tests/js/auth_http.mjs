// auth_http.mjs - calls through the official ConvexHttpClient, each with its own auth:
// setAuth(token), setAdminAuth(key) or setAdminAuth(key, actingAsIdentity), or none.
//
// Usage:
//   node auth_http.mjs '<config JSON>'      (or '@config.json')
//
// Config:
//   url    server URL (default: $TAPE_URL)
//   calls  [{"kind": "query"|"mutation"|"action"|"function", "path": "...", "args": {...},
//            "token": "<JWT>"                       client.setAuth(token), or
//            "adminKey": "...", "actingAs": {...}   client.setAdminAuth(key, actingAs?)}]
//   timeoutMs  fail after this long (default 15000)
//
// Output: {"event":"result","index":0,"ok":true,"value":<Convex JSON>} or
//         {"event":"result","index":0,"ok":false,"error":{"message":...}} per call, then
//         {"event":"done"} (exit 0); exit 1 only on timeout.
import { argsFrom, armTimeout, describeError, emit, finish, loadConfig, makeHttpClient, toJson } from "./lib.mjs";

const USAGE = `
usage: node auth_http.mjs '{"url":"http://127.0.0.1:8000","calls":[{"kind":"query","path":"whoami:me","token":"..."}]}'
`;

const config = loadConfig(USAGE);
armTimeout(config.timeoutMs ?? 15000, () => []);

for (const [index, call] of (config.calls ?? []).entries()) {
  const client = makeHttpClient(config.url);
  if (call.adminKey) client.setAdminAuth(call.adminKey, call.actingAs);
  else if (call.token) client.setAuth(call.token);
  const args = argsFrom(call.args);
  try {
    let value;
    if (call.kind === "mutation") value = await client.mutation(call.path, args);
    else if (call.kind === "action") value = await client.action(call.path, args);
    else if (call.kind === "function") value = await client.function(call.path, undefined, args);
    else value = await client.query(call.path, args);
    emit({ event: "result", index, ok: true, value: toJson(value) });
  } catch (err) {
    emit({ event: "result", index, ok: false, error: describeError(err) });
  }
}
await finish(0, []);
