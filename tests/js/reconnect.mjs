// reconnect.mjs - keep running mutations over one ConvexClient while the test
// restarts the server underneath it; print every acknowledged result.
//
// The official client re-sends unacknowledged mutations after a reconnect
// with the same sessionId/requestId, so a correct server acknowledges each
// mutation exactly once and applies it exactly once.
//
// Usage:
//   node reconnect.mjs '<config JSON>'      (or '@config.json')
//
// Config:
//   url          server URL (default: $TAPE_URL)
//   mutation     {"path": "counter:increment", "args": {"n": "$i"}}; a string that
//                is exactly "$i" becomes the mutation's index (0-based, a number);
//                "$i" inside a longer string is replaced by the index's digits
//   count        number of mutations to run (default 20)
//   concurrency  how many may be in flight at once (default 1 = one after another)
//   intervalMs   pause between starting mutations (default 100)
//   query        optional {"path", "args"}: after the last ack, its value is read
//                over the same client and printed as {"event":"final",...}
//   timeoutMs    fail after this long (default 60000)
//
// Output (JSON lines on stdout):
//   {"event":"started","sessionId":"..."}
//   {"event":"connection","connected":true|false,"connectionCount":N,"retries":N}
//                                                    on every connection change
//   {"event":"ack","i":3,"ok":true,"value":<Convex JSON>,"ms":<latency>}
//   {"event":"ack","i":4,"ok":false,"error":{"message":...,"data"?}}   (function error)
//   {"event":"final","value":<Convex JSON>}          if config.query is set
//   {"event":"done","acks":N,"errors":E,"reconnects":R}   exit 0 once all `count` settled
//   {"event":"failed","reason":"timeout","acks":N,...}     exit 1
import {
  argsFrom,
  armTimeout,
  describeError,
  emit,
  fillTemplate,
  finish,
  loadConfig,
  makeClient,
  toJson,
} from "./lib.mjs";

const USAGE = `
usage: node reconnect.mjs '{"url":"http://127.0.0.1:8000","mutation":{"path":"counter:increment","args":{"n":"$i"}},"count":20}'
`;

const config = loadConfig(USAGE);
if (!config.mutation || typeof config.mutation.path !== "string") {
  process.stderr.write(`config.mutation.path is required\n${USAGE}`);
  process.exit(2);
}
const count = config.count ?? 20;
const concurrency = Math.max(1, config.concurrency ?? 1);
const intervalMs = config.intervalMs ?? 100;

const client = makeClient(config.url);
let acks = 0;
let errors = 0;
let reconnects = 0;
let lastConnected = null;
let lastConnectionCount = 0;

armTimeout(config.timeoutMs ?? 60000, () => [client], () => ({ acks, errors, reconnects }));

emit({ event: "started", sessionId: client.client.sessionId });

client.subscribeToConnectionState((state) => {
  if (state.isWebSocketConnected !== lastConnected || state.connectionCount !== lastConnectionCount) {
    if (state.connectionCount > 1 && state.connectionCount !== lastConnectionCount) reconnects += 1;
    lastConnected = state.isWebSocketConnected;
    lastConnectionCount = state.connectionCount;
    emit({
      event: "connection",
      connected: state.isWebSocketConnected,
      connectionCount: state.connectionCount,
      retries: state.connectionRetries,
    });
  }
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function runOne(i) {
  const args = argsFrom(fillTemplate(config.mutation.args ?? {}, i));
  const started = Date.now();
  try {
    const value = await client.mutation(config.mutation.path, args);
    acks += 1;
    emit({ event: "ack", i, ok: true, value: toJson(value), ms: Date.now() - started });
  } catch (err) {
    errors += 1;
    emit({ event: "ack", i, ok: false, error: describeError(err), ms: Date.now() - started });
  }
}

const inflight = new Set();
for (let i = 0; i < count; i++) {
  while (inflight.size >= concurrency) await Promise.race(inflight);
  const p = runOne(i).finally(() => inflight.delete(p));
  inflight.add(p);
  if (intervalMs > 0) await sleep(intervalMs);
}
await Promise.all(inflight);

if (config.query && typeof config.query.path === "string") {
  try {
    const value = await client.query(config.query.path, argsFrom(config.query.args));
    emit({ event: "final", value: toJson(value) });
  } catch (err) {
    emit({ event: "final", error: describeError(err) });
  }
}
await finish(0, [client], { acks, errors, reconnects });
