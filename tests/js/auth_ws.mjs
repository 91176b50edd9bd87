// auth_ws.mjs - ConvexClients with setAuth(fetchToken) run a scripted scenario:
// subscribe, wait for values or auth states, mutate, clear auth.
//
// Usage:
//   node auth_ws.mjs '<config JSON>'      (or '@config.json')
//
// Config:
//   url        server URL (default: $TAPE_URL)
//   clients    [{"name": "alice", "tokenUrls": ["http://issuer/token?sub=alice", ...]}]
//              fetchToken returns the text of the n-th URL on its n-th call (then the
//              last one again; a null URL returns null: "no token"). Without
//              tokenUrls the client stays anonymous.
//   subscribe  [{"client": "alice", "id": "me", "path": "whoami:me", "args": {}}]
//   steps      run in order:
//              {"waitFor": {"sub": "me", "subject": "alice"|null}}  value.subject is that (null: value null)
//              {"waitFor": {"sub": "mine", "equals": <Convex JSON>}}
//              {"waitFor": {"auth": "alice", "is": true|false}}       setAuth's onChange said so
//              {"mutation": {"client": "alice", "path": "...", "args": {...}}}
//              {"clearAuth": "alice"}
//              {"sleepMs": 500}
//   timeoutMs  fail after this long (default 20000)
//
// Output (JSON lines on stdout):
//   {"event":"token","client":"alice","n":1,"forceRefreshToken":false}   each fetchToken call
//   {"event":"auth","client":"alice","isAuthenticated":true}            each onChange
//   {"event":"update","client":"alice","id":"me","value":<Convex JSON>}
//   {"event":"query_error","client":"alice","id":"me","error":{...}}
//   {"event":"mutation","index":2,"ok":true,"value":...} / {"ok":false,"error":{...}}
//   {"event":"step","index":0}                                           a step finished
//   {"event":"done","latest":{...}} exit 0, or {"event":"failed","reason":"timeout",...} exit 1
import { argsFrom, armTimeout, describeError, emit, finish, jsonEqual, loadConfig, makeClient, toJson } from "./lib.mjs";

const USAGE = `
usage: node auth_ws.mjs '{"url":"http://127.0.0.1:8000","clients":[{"name":"a","tokenUrls":["http://127.0.0.1:9/token"]}],
  "subscribe":[{"client":"a","id":"me","path":"whoami:me"}],"steps":[{"waitFor":{"sub":"me","subject":"a"}}]}'
`;

const config = loadConfig(USAGE);
const clients = new Map();
const authState = new Map();
const latest = new Map();
let waiters = [];

function changed() {
  for (const check of [...waiters]) check();
}

function tokenFetcher(name, urls) {
  let n = 0;
  return async ({ forceRefreshToken }) => {
    const url = urls[Math.min(n, urls.length - 1)];
    n += 1;
    emit({ event: "token", client: name, n, forceRefreshToken });
    if (url === null) return null;
    const response = await fetch(url);
    return await response.text();
  };
}

for (const spec of config.clients ?? []) {
  const client = makeClient(config.url);
  clients.set(spec.name, client);
  if (spec.tokenUrls) {
    client.setAuth(tokenFetcher(spec.name, spec.tokenUrls), (isAuthenticated) => {
      authState.set(spec.name, isAuthenticated);
      emit({ event: "auth", client: spec.name, isAuthenticated });
      changed();
    });
  }
}

for (const sub of config.subscribe ?? []) {
  clients.get(sub.client).onUpdate(
    sub.path,
    argsFrom(sub.args),
    (value) => {
      const json = toJson(value);
      latest.set(sub.id, json);
      emit({ event: "update", client: sub.client, id: sub.id, value: json });
      changed();
    },
    (err) => {
      latest.set(sub.id, { error: err.message });
      emit({ event: "query_error", client: sub.client, id: sub.id, error: describeError(err) });
      changed();
    },
  );
}

function holds(condition) {
  if ("auth" in condition) return authState.get(condition.auth) === condition.is;
  if (!latest.has(condition.sub)) return false;
  const value = latest.get(condition.sub);
  if ("subject" in condition) {
    if (condition.subject === null) return value === null;
    return value !== null && typeof value === "object" && value.subject === condition.subject;
  }
  return jsonEqual(value, condition.equals);
}

function waitFor(condition) {
  return new Promise((resolve) => {
    const check = () => {
      if (holds(condition)) {
        waiters = waiters.filter((w) => w !== check);
        resolve();
      }
    };
    waiters.push(check);
    check();
  });
}

armTimeout(
  config.timeoutMs ?? 20000,
  () => [...clients.values()],
  () => ({ latest: Object.fromEntries(latest), auth: Object.fromEntries(authState) }),
);

for (const [index, step] of (config.steps ?? []).entries()) {
  if (step.waitFor) {
    await waitFor(step.waitFor);
  } else if (step.mutation) {
    const { client, path, args } = step.mutation;
    try {
      const value = await clients.get(client).mutation(path, argsFrom(args));
      emit({ event: "mutation", index, ok: true, value: toJson(value) });
    } catch (err) {
      emit({ event: "mutation", index, ok: false, error: describeError(err) });
    }
  } else if (step.clearAuth) {
    clients.get(step.clearAuth).client.clearAuth();
  } else if (step.sleepMs) {
    await new Promise((resolve) => setTimeout(resolve, step.sleepMs));
  }
  emit({ event: "step", index });
}
await finish(0, [...clients.values()], { latest: Object.fromEntries(latest) });
