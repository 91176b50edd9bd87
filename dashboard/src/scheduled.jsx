// Scheduled jobs: the `_scheduled_functions` table, live, by state; cancel a pending or running job.
import React, { useEffect, useState } from "react";
import { usePaginatedQuery } from "convex/react";
import { api, fn, run, show, formatTime } from "./api.js";

function Crons({ adminKey }) {
  const [crons, setCrons] = useState([]);
  useEffect(() => {
    const load = () => api(adminKey, "GET", "/api/admin/crons").then((r) => setCrons(r.body.crons), () => {});
    load();
    const timer = setInterval(load, 5000);
    return () => clearInterval(timer);
  }, [adminKey]);
  if (!crons.length) return <p className="muted">No cron jobs (define them in crons.py).</p>;
  return (
    <table className="rows" data-testid="crons">
      <thead>
        <tr>
          <th>cron</th>
          <th>function</th>
          <th>schedule</th>
          <th>last run</th>
          <th>next run</th>
        </tr>
      </thead>
      <tbody>
        {crons.map((c) => (
          <tr key={c.name} data-testid="cron">
            <td>{c.name}</td>
            <td>
              {c.function} <span className="mono muted">{show(c.args)}</span>
            </td>
            <td className="mono">{c.schedule}</td>
            <td className="time">{c.lastScheduledTime ? formatTime(c.lastScheduledTime) : "never"}</td>
            <td className="time">{formatTime(c.nextScheduledTime)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function ScheduledPage({ adminKey }) {
  const [state, setState] = useState("all");
  const [message, setMessage] = useState(null);
  const args = { table: "_scheduled_functions", order: "desc" };
  if (state !== "all") args.filter = { field: "state.kind", value: state };
  const { results, status, loadMore } = usePaginatedQuery(fn.documents, args, { initialNumItems: 100 });
  async function cancel(id) {
    const r = await run(adminKey, "_system/dashboard:cancelJob", { id });
    setMessage(r.ok ? `cancelled ${id}` : r.error);
  }
  return (
    <div>
      <h3>Cron jobs</h3>
      <Crons adminKey={adminKey} />
      <h3>Scheduled functions</h3>
      <div className="toolbar">
        <select id="job-state" value={state} onChange={(e) => setState(e.target.value)}>
          {["all", "pending", "inProgress", "success", "failed", "canceled"].map((s) => (
            <option key={s}>{s}</option>
          ))}
        </select>
        <span className="muted">{results.length} job(s) · live</span>
        {message && <span className="muted">{message}</span>}
      </div>
      <table className="rows" data-testid="jobs">
        <thead>
          <tr>
            <th>function</th>
            <th>scheduled for</th>
            <th>state</th>
            <th>args</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {results.map((job) => {
            const kind = job.state && job.state.kind;
            return (
              <tr key={job._id} data-testid="job" data-state={kind}>
                <td>{job.name}</td>
                <td className="time">{formatTime(job.scheduledTime)}</td>
                <td>
                  {kind}
                  {job.state && job.state.error ? `: ${job.state.error}` : ""}
                </td>
                <td className="mono">{show(job.args)}</td>
                <td>
                  {(kind === "pending" || kind === "inProgress") && (
                    <button className="danger" onClick={() => cancel(job._id)}>
                      Cancel
                    </button>
                  )}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
      {status === "CanLoadMore" && <button onClick={() => loadMore(100)}>Load more</button>}
    </div>
  );
}
