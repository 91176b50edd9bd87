// two_queries.mjs - subscribe to several queries, run one mutation, and check
// that every subscribed query changed in the SAME server Transition.
//
// ConvexClient has no per-transition callback, so this uses its underlying
// BaseConvexClient (`client.client`): `subscribe(path, args)` returns the
// query token and `addOnTransitionHandler(fn)` is called once per server
// Transition with the tokens whose results changed. `onUpdate` supplies the
// values.
//
// Usage:
//   node two_queries.mjs '<config JSON>'      (or '@config.json')
//
// Config:
//   url        server URL (default: $TAPE_URL)
//   queries    [{"path": "...", "args": {...}}, {"path": "...", "args": {...}}]  (2 or more)
//   mutation   {"path": "...", "args": {...}}  run once every query has a first result
//   timeoutMs  fail after this long (default 15000)
//
// Output (JSON lines on stdout):
//   {"event":"update","query":0,"value":<Convex JSON>}          every onUpdate
//   {"event":"query_error","query":1,"message":"...","data"?}  a query failed
//   {"event":"transition","changed":[0,1],"ts":"<decimal ts>"}  every Transition
//                                                 that changed one of our queries
//   {"event":"mutation","ok":true,"value":<Convex JSON>} / {"event":"mutation","ok":false,"error":{...}}
//   {"event":"done","sameTransition":true}   exit 0: the mutation settled and, after
//                                            it was sent, one Transition changed all queries
//   {"event":"failed","reason":"timeout",...}    exit 1 (e.g. the queries changed
//                                                 in separate transitions)
import { argsFrom, armTimeout, describeError, emit, finish, loadConfig, makeClient, toJson } from "./lib.mjs";

const USAGE = `
usage: node two_queries.mjs '{"url":"http://127.0.0.1:8000","queries":[{"path":"a:get"},{"path":"b:get"}],"mutation":{"path":"a:set","args":{}}}'
`;

const config = loadConfig(USAGE);
const queries = config.queries;
if (!Array.isArray(queries) || queries.length < 2 || !config.mutation) {
  process.stderr.write(`config.queries (2+) and config.mutation are required\n${USAGE}`);
  process.exit(2);
}

const client = makeClient(config.url);
const base = client.client;
const tokenToIndex = new Map();
const haveFirst = new Set();
let mutationSent = false;
let mutationScheduled = false;
let mutationSettled = false;
let sawSameTransition = false;
let splitTransitions = 0;

armTimeout(config.timeoutMs ?? 15000, () => [client], () => ({ splitTransitions }));

base.addOnTransitionHandler((transition) => {
  const changed = [];
  for (const q of transition.queries) {
    const index = tokenToIndex.get(q.token);
    if (index !== undefined) changed.push(index);
  }
  if (changed.length === 0) return;
  changed.sort((a, b) => a - b);
  emit({ event: "transition", changed, ts: transition.timestamp.toString() });
  if (!mutationSent) return;
  if (changed.length === queries.length) {
    sawSameTransition = true;
    maybeFinish();
  } else {
    splitTransitions += 1;
  }
});

async function runMutation() {
  mutationSent = true;
  try {
    const value = await client.mutation(config.mutation.path, argsFrom(config.mutation.args));
    emit({ event: "mutation", ok: true, value: toJson(value) });
  } catch (err) {
    emit({ event: "mutation", ok: false, error: describeError(err) });
  }
  mutationSettled = true;
  maybeFinish();
}

function maybeFinish() {
  if (sawSameTransition && mutationSettled) void finish(0, [client], { sameTransition: true });
}

function gotResult(index) {
  haveFirst.add(index);
  // Deferred so the Transition that delivered the first results is fully
  // handled (by every handler) before the mutation counts as sent.
  if (!mutationScheduled && haveFirst.size === queries.length) {
    mutationScheduled = true;
    setTimeout(() => void runMutation(), 0);
  }
}

for (const [index, q] of queries.entries()) {
  const args = argsFrom(q.args);
  const { queryToken } = base.subscribe(q.path, args);
  tokenToIndex.set(queryToken, index);
  client.onUpdate(
    q.path,
    args,
    (value) => {
      emit({ event: "update", query: index, value: toJson(value) });
      gotResult(index);
    },
    (err) => {
      emit({ event: "query_error", query: index, ...describeError(err) });
      gotResult(index);
    },
  );
}
