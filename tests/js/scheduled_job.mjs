// scheduled_job.mjs - subscribe to a query over `_scheduled_functions` (ctx.db.system), run a mutation
// that schedules a job, and watch the job's state go pending -> success through live updates.
//
// Usage:
//   node scheduled_job.mjs '{"url": "...", "query": "jobs:jobs", "mutation": {"path": "...", "args": {...}}}'
//
// Output (JSON lines on stdout):
//   {"event":"update","states":["pending"]}   every onUpdate: the job states, oldest first
//   {"event":"mutation","value":<job id>}
//   {"event":"done","states":[...]}           exit 0: a job was seen pending, then success
//   {"event":"failed","reason":"timeout",...} exit 1
import { argsFrom, armTimeout, describeError, emit, finish, loadConfig, makeClient } from "./lib.mjs";

const USAGE = `
usage: node scheduled_job.mjs '{"url":"http://127.0.0.1:8000","query":"jobs:jobs","mutation":{"path":"jobs:schedule","args":{}}}'
`;

const config = loadConfig(USAGE);
const client = makeClient(config.url);
const seen = [];
let sent = false;

armTimeout(config.timeoutMs ?? 15000, () => [client], () => ({ seen }));

client.onUpdate(config.query, {}, (jobs) => {
  const states = jobs.map((job) => job.state.kind);
  seen.push(states);
  emit({ event: "update", states });
  if (!sent) {
    sent = true;
    client.mutation(config.mutation.path, argsFrom(config.mutation.args)).then(
      (value) => emit({ event: "mutation", value }),
      (err) => { emit({ event: "mutation_error", error: describeError(err) }); finish(1, [client]); });
  }
  const sawPending = seen.some((s) => s.length === 1 && s[0] === "pending");
  if (sawPending && states.length === 1 && states[0] === "success") {
    finish(0, [client], { states });
  }
}, (err) => { emit({ event: "query_error", error: describeError(err) }); finish(1, [client]); });
