// Health: log offset, lag, sessions, subscriptions and commits/s (the log's growth between two polls).
import React, { useEffect, useRef, useState } from "react";
import { api } from "./api.js";

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
  ];
  return (
    <div className="cards" data-testid="health">
      {cards.map(([label, value]) => (
        <div className="card" key={label} data-testid={`stat-${label.replace(/[^a-z]+/g, "-")}`}>
          <div className="muted">{label}</div>
          <div className="big">{String(value)}</div>
        </div>
      ))}
      {health && health.reason && <div className="error">{health.reason}</div>}
    </div>
  );
}
