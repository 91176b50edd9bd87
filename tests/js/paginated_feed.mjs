// paginated_feed.mjs - live pagination with the official client's paginated
// query support (ConvexClient.onPaginatedUpdate_experimental, the same
// PaginatedQueryClient that splits pages), in several "tabs" (one ConvexClient
// and WebSocket each) while rows are inserted, deleted and moved.
//
// Usage:
//   node paginated_feed.mjs '<config JSON>'      (or '@config.json')
//
// Config:
//   url              server URL (default: $TAPE_URL)
//   query            the paginated query path, e.g. "feed:list"
//   args             its other arguments (default {})
//   truth            a query returning every row in page order, e.g. "feed:all"
//   initialNumItems  first page size
//   tabs             how many clients (default 2)
//   steps            run in order:
//     {"op": "loadMore", "numItems": n}           every tab loads one more page
//     {"op": "mutation", "path": "...", "args": {...}}   run once (by tab 0)
//     {"op": "check", "label": "...", "length": n}   wait until every tab shows
//        exactly the first n rows of `truth` (in order, none twice), then print them
//     {"op": "signal", "name": "..."}   print {"event":"waiting","name"} and wait until the
//        file <signalDir>/<name> exists (the test restarts the server meanwhile, say)
//   signalDir        directory of the signal files
//   timeoutMs        fail after this long (default 30000)
//
// Output (JSON lines on stdout):
//   {"event":"state","label":"...","tab":0,"ids":[...],"status":"CanLoadMore","pages":3}
//   {"event":"done","duplicatesSeen":0}   exit 0
//   {"event":"failed","reason":"...","tabs":[...]}   exit 1 (a check never held, or a tab
//        was ever shown a row twice)
import { existsSync } from "node:fs";
import { join } from "node:path";
import { argsFrom, armTimeout, describeError, emit, finish, loadConfig, makeClient } from "./lib.mjs";

const USAGE = `
usage: node paginated_feed.mjs '{"url":"http://127.0.0.1:8000","query":"feed:list","truth":"feed:all","initialNumItems":3,"steps":[{"op":"check","label":"start","length":3}]}'
`;

const config = loadConfig(USAGE);
const tabCount = config.tabs ?? 2;
const args = argsFrom(config.args);
const clients = Array.from({ length: tabCount }, () => makeClient(config.url));
const latest = clients.map(() => null);
let duplicatesSeen = 0;
let firstDuplicate = null;

const describeTabs = () => latest.map((r, tab) => ({
  tab,
  status: r?.status,
  ids: r ? r.results.map((m) => m._id) : null,
  pages: pageCount(tab),
}));
armTimeout(config.timeoutMs ?? 30000, () => clients, () => ({ tabs: describeTabs() }));

function pageCount(tab) {
  const set = clients[tab]._paginatedClient?.paginatedQuerySet;
  if (!set) return 0;
  let count = 0;
  for (const entry of set.values()) count += entry.pageKeys.length;
  return count;
}

const subscriptions = clients.map((client, tab) =>
  client.onPaginatedUpdate_experimental(
    config.query,
    args,
    { initialNumItems: config.initialNumItems },
    (result) => {
      latest[tab] = result;
      const ids = result.results.map((m) => m._id);
      if (new Set(ids).size !== ids.length) {
        duplicatesSeen += 1;
        firstDuplicate ??= { tab, ids };
      }
    },
    (err) => emit({ event: "query_error", tab, ...describeError(err) }),
  ),
);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(predicate, what) {
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    if (await predicate()) return;
    await sleep(25);
  }
  await finish(1, clients, { reason: `gave up waiting for ${what}`, tabs: describeTabs() });
}

const settled = (tab) => latest[tab] !== null &&
  latest[tab].status !== "LoadingFirstPage" && latest[tab].status !== "LoadingMore";

async function truthIds() {
  const rows = await clients[0].query(config.truth, {});
  return rows.map((m) => m._id);
}

await waitFor(() => latest.every((_, tab) => settled(tab)), "every tab's first page");
for (const step of config.steps ?? []) {
  if (step.op === "loadMore") {
    subscriptions.forEach((sub, tab) => sub.getCurrentValue()?.loadMore(step.numItems) ?? latest[tab].loadMore(step.numItems));
    await sleep(20);
    await waitFor(() => latest.every((_, tab) => settled(tab)), "loadMore to finish");
  } else if (step.op === "mutation") {
    try {
      await clients[0].mutation(step.path, argsFrom(step.args));
    } catch (err) {
      await finish(1, clients, { reason: `mutation ${step.path} failed`, error: describeError(err) });
    }
  } else if (step.op === "check") {
    let truth = [];
    await waitFor(async () => {
      truth = (await truthIds()).slice(0, step.length);
      return latest.every((r, tab) => settled(tab) && JSON.stringify(r.results.map((m) => m._id)) === JSON.stringify(truth));
    }, `check "${step.label}": every tab showing the first ${step.length} rows`);
    latest.forEach((r, tab) => emit({
      event: "state", label: step.label, tab, ids: r.results.map((m) => m._id), status: r.status,
      pages: pageCount(tab), truth,
    }));
  } else if (step.op === "signal") {
    emit({ event: "waiting", name: step.name });
    const file = join(config.signalDir, step.name);
    while (!existsSync(file)) await sleep(25);
  } else {
    await finish(2, clients, { reason: `unknown step op ${JSON.stringify(step.op)}` });
  }
}
if (duplicatesSeen > 0) {
  await finish(1, clients, { reason: "a tab was shown a row twice", duplicatesSeen, firstDuplicate });
}
await finish(0, clients, { duplicatesSeen });
