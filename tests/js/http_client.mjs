// http_client.mjs - run a list of calls through the official ConvexHttpClient
// and print each outcome, including ConvexError data.
//
// Usage:
//   node http_client.mjs '<config JSON>'      (or '@config.json')
//
// Config:
//   url      server URL (default: $TAPE_URL)
//   auth     optional JWT for client.setAuth (sent as "Authorization: Bearer ...")
//   adminAuth  optional admin key for client.setAdminAuth ("Authorization: Convex ...")
//   calls    [{"kind": "query"|"mutation"|"action"|"consistentQuery"|"function",
//              "path": "module:function", "args": {...},
//              "componentPath": "..." (kind "function" only)}, ...]  run in order
//   timeoutMs  fail after this long (default 15000)
//
// Output (JSON lines on stdout), one per call:
//   {"event":"result","index":0,"kind":"query","path":"...","ok":true,"value":<Convex JSON>}
//   {"event":"result","index":1,"kind":"mutation","path":"...","ok":false,
//    "error":{"message":"...","name":"ConvexError"|"Error","data":<Convex JSON>?}}
// then {"event":"done","ok":<count>,"errors":<count>} and exit 0. A function
// error is a normal outcome (ok:false); `data` is present only when the
// server sent errorData (HTTP 560 body). Exit 1 only on timeout.
import { argsFrom, armTimeout, describeError, emit, finish, loadConfig, makeHttpClient, toJson } from "./lib.mjs";

const USAGE = `
usage: node http_client.mjs '{"url":"http://127.0.0.1:8000","calls":[{"kind":"query","path":"m:list","args":{}}]}'
`;

const config = loadConfig(USAGE);
const calls = config.calls;
if (!Array.isArray(calls)) {
  process.stderr.write(`config.calls must be an array\n${USAGE}`);
  process.exit(2);
}
const client = makeHttpClient(config.url);
if (config.adminAuth) client.setAdminAuth(config.adminAuth);
else if (config.auth) client.setAuth(config.auth);

armTimeout(config.timeoutMs ?? 15000, () => []);

async function runCall(call) {
  const args = argsFrom(call.args);
  switch (call.kind) {
    case "query":
      return client.query(call.path, args);
    case "consistentQuery":
      return client.consistentQuery(call.path, args);
    case "mutation":
      return client.mutation(call.path, args);
    case "action":
      return client.action(call.path, args);
    case "function":
      return client.function(call.path, call.componentPath, args);
    default:
      throw new Error(`unknown call kind ${JSON.stringify(call.kind)}`);
  }
}

let ok = 0;
let errors = 0;
for (const [index, call] of calls.entries()) {
  try {
    const value = await runCall(call);
    ok += 1;
    emit({ event: "result", index, kind: call.kind, path: call.path, ok: true, value: toJson(value) });
  } catch (err) {
    errors += 1;
    emit({ event: "result", index, kind: call.kind, path: call.path, ok: false, error: describeError(err) });
  }
}
await finish(0, [], { ok, errors });
