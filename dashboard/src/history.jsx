// History: a slider over the log. The data view as of the chosen moment (admin time travel), the commits
// between that moment and now (from the log), and a restore of that moment into a new data directory.
import React, { useEffect, useState } from "react";
import { api } from "./api.js";
import { Rows, TableList, useTables } from "./data.jsx";

const WINDOW = 500;

export function HistoryPage({ adminKey }) {
  const { tables } = useTables(adminKey);
  const [showSystem, setShowSystem] = useState(false);
  const [table, setTable] = useState(null);
  const [log, setLog] = useState({ commits: [], end: 0 });
  const [includeSystem, setIncludeSystem] = useState(false);
  const [offset, setOffset] = useState(null); // null: follow the end
  const [view, setView] = useState({ rows: [], time: null, error: null });
  const [restore, setRestore] = useState(null);
  const [dest, setDest] = useState("");
  const [restoring, setRestoring] = useState(false);

  useEffect(() => {
    let stop = false;
    async function load() {
      try {
        const r = await api(adminKey, "GET", `/api/admin/commits?limit=${WINDOW}&include_system=${includeSystem ? 1 : 0}`);
        if (!stop) setLog(r.body);
      } catch {
        /* shown as an empty list; the next poll retries */
      }
    }
    load();
    const timer = setInterval(load, 2000);
    return () => {
      stop = true;
      clearInterval(timer);
    };
  }, [adminKey, includeSystem]);

  const last = log.end - 1;
  const lo = -1; // the whole log; the commits listed are the latest WINDOW
  const at = offset === null ? last : Math.min(offset, last);
  const visible = tables.filter((t) => showSystem || !t.system);
  const name = table || (visible[0] && visible[0].name);

  useEffect(() => {
    if (!name || log.end === 0) return;
    let stop = false;
    api(adminKey, "POST", "/api/admin/query_at", {
      path: "_system/dashboard:documents",
      args: { table: name, paginationOpts: { numItems: 200, cursor: null } },
      offset: at,
      format: "json",
    })
      .then((r) => {
        if (stop) return;
        if (r.body.status === "success") setView({ rows: r.body.value.page, time: r.body.time, error: null });
        else setView({ rows: [], time: null, error: r.body.errorMessage });
      })
      .catch((err) => !stop && setView({ rows: [], time: null, error: String(err.message || err) }));
    return () => {
      stop = true;
    };
  }, [adminKey, name, at, log.end]);

  const between = log.commits.filter((c) => c.offset > at);
  const atCommit = log.commits.find((c) => c.offset === at);

  async function doRestore() {
    setRestoring(true);
    setRestore(null);
    try {
      const body = { offset: at };
      if (dest.trim()) body.dest = dest.trim();
      const r = await api(adminKey, "POST", "/api/admin/restore", body);
      setRestore(r.body);
    } catch (err) {
      setRestore({ error: String(err.message || err) });
    } finally {
      setRestoring(false);
    }
  }

  return (
    <div>
      <div className="slider-box">
        <input
          id="history-slider"
          type="range"
          min={lo}
          max={Math.max(last, lo)}
          step={1}
          value={at}
          onChange={(e) => {
            const v = Number(e.target.value);
            setOffset(v >= last ? null : v);
          }}
        />
        <div className="slider-label" data-testid="history-at" data-offset={at}>
          {offset === null ? "now (live) · " : ""}state after log offset <b>{at}</b>
          {view.time ? ` · ${view.time}` : atCommit ? ` · ${atCommit.time}` : ""}
          {at === -1 ? " (empty database)" : ""}
        </div>
        <div className="buttons">
          <button onClick={() => setOffset(Math.max(lo, at - 1))} id="history-back">
            ◀ one commit back
          </button>
          <button onClick={() => setOffset(at + 1 >= last ? null : at + 1)} id="history-forward">
            one commit forward ▶
          </button>
          <button onClick={() => setOffset(null)}>now</button>
        </div>
      </div>
      <div className="split">
        <TableList tables={tables} selected={name} onSelect={setTable} showSystem={showSystem} setShowSystem={setShowSystem} />
        <div className="grow">
          <h3>
            {name} as of offset {at} <span className="muted">({view.rows.length} rows)</span>
          </h3>
          {view.error && <div className="error">{view.error}</div>}
          <div data-testid="history-rows">
            <Rows rows={view.rows} />
          </div>
          <div className="restore">
            <h3>Restore this moment</h3>
            <p className="muted">Builds a new data directory holding exactly the commits up to offset {at}; the live deployment is not touched.</p>
            <input id="restore-dest" placeholder="new directory (default: beside the data directory)" value={dest} onChange={(e) => setDest(e.target.value)} />
            <button id="restore" onClick={doRestore} disabled={restoring}>
              {restoring ? "Restoring…" : `Restore offset ${at} into a new directory`}
            </button>
            {restore && restore.error && <div className="error">{restore.error}</div>}
            {restore && !restore.error && (
              <div className="ok" data-testid="restore-result" data-dest={restore.dest}>
                Restored offset {restore.offset} into <code>{restore.dest}</code> in {restore.seconds} s. Serve it with:
                <pre data-testid="restore-command">{restore.command}</pre>
              </div>
            )}
          </div>
        </div>
      </div>
      <h3>
        Commits after offset {at} <span className="muted">({between.length}{log.end - 1 - at > WINDOW ? `; the latest ${WINDOW} shown` : ""})</span>{" "}
        <label className="small muted">
          <input type="checkbox" checked={includeSystem} onChange={(e) => setIncludeSystem(e.target.checked)} /> system writes
        </label>
      </h3>
      <table className="rows" data-testid="commits">
        <thead>
          <tr>
            <th>offset</th>
            <th>time</th>
            <th>function</th>
            <th>documents written</th>
          </tr>
        </thead>
        <tbody>
          {between.map((c) => (
            <tr key={c.offset} data-testid="commit" data-offset={c.offset} onClick={() => setOffset(c.offset - 1)} title="show the state before this commit">
              <td>{c.offset}</td>
              <td className="time">{c.time}</td>
              <td>{c.function || "(system)"}</td>
              <td>
                {c.writes.length ? c.writes.map((w) => `${w.op} ${w.table} ${w.id}`).join(", ") : <span className="muted">system tables only</span>}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
