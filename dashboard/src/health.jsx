// Health: log offset, lag, sessions, subscriptions and commits/s (the log's growth between two polls).
import React, { useEffect, useRef, useState } from "react";
import { api } from "./api.js";

// A histogram bucket's upper bound (seconds) as "≤ X ms"; null: past the last bucket or no calls.
function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return `≤ ${seconds * 1000 >= 1 ? Math.round(seconds * 1000) : (seconds * 1000).toFixed(2)} ms`;
}

export function HealthPage({ adminKey }) {
  const [stats, setStats] = useState(null);
  const [health, setHealth] = useState(null);
  const [rate, setRate] = useState(null);
  const previous = useRef(null);
  useEffect(() => {
    let stop = false;
    async function poll() {
      try {
        const s = (await api(adminKey, "GET", "/api/admin/stats")).body;
        const h = await fetch("/health").then((r) => r.json());
        if (stop) return;
        const prev = previous.current;
        if (prev && s.time > prev.time) setRate((s.logEnd - prev.logEnd) / (s.time - prev.time));
        previous.current = s;
        setStats(s);
        setHealth(h);
      } catch {
        /* the next poll retries */
      }
    }
    poll();
    const timer = setInterval(poll, 1000);
    return () => {
      stop = true;
      clearInterval(timer);
    };
  }, [adminKey]);
  if (!stats) return <p className="muted">Loading…</p>;
  const cards = [
    ["state", health ? health.state : "?"],
    ["role", stats.role],
    ["log offset", stats.offset],
    ["log end", stats.logEnd],
    ["projection lag", `${stats.lag} records`],
    ["commits/s", rate === null ? "…" : rate.toFixed(1)],
    ["sessions", stats.sessions],
    ["subscriptions", stats.subscriptions],
    ["query re-runs", stats.reruns],
    ["uptime", `${Math.round(stats.uptimeSeconds)} s`],
    ["function calls", stats.allFunctions.calls],
    ["p50 duration", ms(stats.allFunctions.p50)],
    ["p99 duration", ms(stats.allFunctions.p99)],
  ];
  return (
    <div>
      <div className="cards" data-testid="health">
        {cards.map(([label, value]) => (
          <div className="card" key={label} data-testid={`stat-${label.replace(/[^a-z0-9]+/g, "-")}`}>
            <div className="muted">{label}</div>
            <div className="big">{String(value)}</div>
          </div>
        ))}
        {health && health.reason && <div className="error">{health.reason}</div>}
      </div>
      <h3>Function durations since the server started</h3>
      <table className="rows" data-testid="durations">
        <thead>
          <tr>
            <th>function</th>
            <th>calls</th>
            <th>errors</th>
            <th>p50</th>
            <th>p99</th>
          </tr>
        </thead>
        <tbody>
          {stats.functions.map((f) => (
            <tr key={f.path} data-testid="duration" data-path={f.path}>
              <td>{f.path}</td>
              <td>{f.calls}</td>
              <td className={f.errors ? "error" : ""}>{f.errors}</td>
              <td>{ms(f.p50)}</td>
              <td>{ms(f.p99)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
