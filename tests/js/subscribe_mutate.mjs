// subscribe_mutate.mjs - one client subscribes to a query, a second client
// runs mutations, and every update the first client receives is printed.
//
// Usage:
//   node subscribe_mutate.mjs '<config JSON>'      (or '@config.json')
//
// Config:
//   url          server URL, e.g. "http://127.0.0.1:8000" (default: $TAPE_URL)
//   query        {"path": "messages:list", "args": {...}}   (args default {})
//   mutations    [{"path": "messages:send", "args": {...}}, ...]  run in order by
//                a second ConvexClient after the first update arrives (default [])
//   expectUpdates  stop successfully after this many updates (default: once
//                every mutation has settled, 1 + the number that succeeded -
//                a failed mutation changes nothing, so it brings no update)
//   expectValue  optional Convex-JSON value: stop successfully as soon as an
//                update equals it; when given without expectUpdates, only a
//                matching update ends the run (else it times out)
//   timeoutMs    fail after this long (default 15000)
//
// Output (JSON lines on stdout):
//   {"event":"update","n":1,"value":<Convex JSON>}      each query result
//   {"event":"query_error","n":2,"message":"...","data":<Convex JSON>?}
//                                                       query failed (QueryFailed)
//   {"event":"mutation","index":0,"path":"...","ok":true,"value":<Convex JSON>}
//   {"event":"mutation","index":0,"path":"...","ok":false,"error":{"message","data"?}}
//   {"event":"done", "updates": N}   exit 0
//   {"event":"failed","reason":"timeout",...}   exit 1
import {
  argsFrom,
  armTimeout,
  describeError,
  emit,
  finish,
  jsonEqual,
  loadConfig,
  makeClient,
  toJson,
} from "./lib.mjs";

const USAGE = `
usage: node subscribe_mutate.mjs '{"url":"http://127.0.0.1:8000","query":{"path":"m:list","args":{}},"mutations":[{"path":"m:add","args":{"x":1}}]}'
`;

const config = loadConfig(USAGE);
const query = config.query;
if (!query || typeof query.path !== "string") {
  process.stderr.write(`config.query.path is required\n${USAGE}`);
  process.exit(2);
}
const mutations = config.mutations ?? [];
const timeoutMs = config.timeoutMs ?? 15000;

const watcher = makeClient(config.url);
const writer = makeClient(config.url);
let updates = 0;
let mutating = false;
let settled = false;
let succeeded = 0;

function expectedUpdates() {
  if (config.expectUpdates !== undefined) return config.expectUpdates;
  if (config.expectValue !== undefined) return Infinity;
  return settled ? 1 + succeeded : Infinity;
}

armTimeout(timeoutMs, () => [watcher, writer], () => ({ updates }));

function checkDone(valueJson) {
  const matched = config.expectValue !== undefined && jsonEqual(valueJson, config.expectValue);
  if (updates >= expectedUpdates() || matched) {
    void finish(0, [watcher, writer], { updates });
  }
}

async function runMutations() {
  for (const [index, m] of mutations.entries()) {
    try {
      const value = await writer.mutation(m.path, argsFrom(m.args));
      succeeded += 1;
      emit({ event: "mutation", index, path: m.path, ok: true, value: toJson(value) });
    } catch (err) {
      emit({ event: "mutation", index, path: m.path, ok: false, error: describeError(err) });
    }
  }
  settled = true;
  checkDone(undefined);
}

function startMutating() {
  if (mutating) return;
  mutating = true;
  void runMutations();
}

watcher.onUpdate(
  query.path,
  argsFrom(query.args),
  (value) => {
    updates += 1;
    const valueJson = toJson(value);
    emit({ event: "update", n: updates, value: valueJson });
    startMutating();
    checkDone(valueJson);
  },
  (err) => {
    updates += 1;
    emit({ event: "query_error", n: updates, ...describeError(err) });
    startMutating();
    checkDone(undefined);
  },
);
