// fidelity.mjs - what a Convex app sees of function logs, errors and numbers, through the
// official ConvexClient (WebSocket) and ConvexHttpClient, against the tests/apps/fidelity app.
//
// Usage:
//   node fidelity.mjs '{"url":"http://127.0.0.1:8000"}'
//
// Output (JSON lines on stdout):
//   {"event":"console","client":"ws"|"http","level":"info"|"error"|...,"text":"[CONVEX Q(logs:hello)] [LOG] hello ada"}
//       every line the client's logger printed (the "%c" colour argument removed)
//   {"event":"step","name":"...",...}   one per scenario step, with what the app observed
//   {"event":"done"}  exit 0;  {"event":"failed",...}  exit 1
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { ConvexError } from "convex/values";
import WebSocket from "ws";
import { armTimeout, emit, finish, loadConfig, toJson } from "./lib.mjs";

const USAGE = `
usage: node fidelity.mjs '{"url":"http://127.0.0.1:8000"}'
`;

const config = loadConfig(USAGE);

/** A logger like the default one, but every console line becomes an event. */
function capturingLogger(client) {
  const line = (level) => (...args) => {
    const parts = [];
    for (let i = 0; i < args.length; i++) {
      const a = args[i];
      if (typeof a === "string" && a.startsWith("%c")) {
        parts.push(a.slice(2));
        i++; // the CSS argument that goes with %c
      } else {
        parts.push(typeof a === "string" ? a : JSON.stringify(a));
      }
    }
    emit({ event: "console", client, level, text: parts.join(" ") });
  };
  return { logVerbose: () => {}, log: line("info"), warn: line("warn"), error: line("error") };
}

const ws = new ConvexClient(config.url, {
  webSocketConstructor: WebSocket,
  logger: capturingLogger("ws"),
  unsavedChangesWarning: false,
});
const http = new ConvexHttpClient(config.url, { logger: capturingLogger("http") });
armTimeout(config.timeoutMs ?? 20000, () => [ws]);

function caught(err) {
  return {
    isConvexError: err instanceof ConvexError,
    code: err instanceof ConvexError && err.data && typeof err.data === "object" ? err.data.code ?? null : null,
    data: err instanceof ConvexError ? toJson(err.data) : null,
    message: err.message,
  };
}

async function step(name, fn) {
  try {
    emit({ event: "step", name, ok: true, ...(await fn()) });
  } catch (err) {
    emit({ event: "step", name, ok: false, ...caught(err) });
  }
}

try {
  // A subscription: the query's log lines are printed when its result arrives.
  await step("subscribe", () => new Promise((resolve) => {
    const stop = ws.onUpdate("logs:hello", { who: "ada" }, (value) => { stop(); resolve({ value }); });
  }));
  await step("mutation", async () => ({ value: await ws.mutation("logs:chatty", { n: 2 }) }));
  await step("action", async () => ({ value: await ws.action("logs:tagged", { tag: "act", lines: 2, pause: 0 }) }));
  await step("mutation_error", async () => ({ value: await ws.mutation("logs:warn_and_fail", {}) }));
  await step("http_query", async () => ({ value: await http.query("logs:hello", { who: "bob" }) }));
  await step("http_error", async () => ({ value: await http.mutation("shapes:refuse", { code: "HTTP_NOPE" }) }));
  // Numbers: an undeclared Python int is a JS number; v.int64() stays a BigInt.
  await step("count", async () => {
    const count = await ws.query("shapes:count", { n: 3 });
    return { type: typeof count, plusOne: count + 1 };
  });
  await step("numbers", async () => {
    const r = await ws.query("shapes:numbers", {});
    return { types: Object.fromEntries(Object.entries(r).map(([k, v]) => [k, typeof v])), value: toJson(r) };
  });
  await step("counters", async () => {
    await ws.mutation("shapes:add_counter", { count: 2n, score: 1.5, other: 4 });
    const [doc] = await http.query("shapes:counters", {});
    return { count: typeof doc.count, score: typeof doc.score, other: typeof doc.other, sum: doc.other + doc.score };
  });
  await step("returns_mismatch", async () => ({ value: await ws.query("shapes:wrong_deep", {}) }));
  await step("bad_args", async () => ({ value: await ws.mutation("shapes:add_counter", { count: 1, score: 1, other: 1 }) }));
  await step("too_long", async () => ({ value: await http.query("shapes:long_list", { n: 9000 }) }));
  await finish(0, [ws]);
} catch (err) {
  await finish(1, [ws], { reason: String(err && err.stack ? err.stack : err) });
}
