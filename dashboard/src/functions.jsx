// Functions: every function with its args validator; run any (internal ones too) with JSON args. Logs: the runs.
import React, { useEffect, useState } from "react";
import { api, run, show, exampleArgs, validatorText, formatTime } from "./api.js";

export function FunctionsPage({ adminKey, onRun }) {
  const [functions, setFunctions] = useState([]);
  const [error, setError] = useState(null);
  const [selected, setSelected] = useState(null);
  const [args, setArgs] = useState("{}");
  const [identity, setIdentity] = useState("");
  const [result, setResult] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    api(adminKey, "GET", "/api/admin/functions")
      .then((r) => setFunctions(r.body.functions))
      .catch((err) => setError(String(err.message || err)));
  }, [adminKey]);
  const fnDef = functions.find((f) => f.path === selected);
  function choose(f) {
    setSelected(f.path);
    setArgs(JSON.stringify(exampleArgs(f.args), null, 2));
    setResult(null);
  }
  async function go() {
    let parsed, who;
    try {
      parsed = JSON.parse(args);
      who = identity.trim() ? JSON.parse(identity) : undefined;
    } catch (err) {
      setResult({ ok: false, error: `not valid JSON: ${err.message}`, ms: 0 });
      return;
    }
    setBusy(true);
    const r = await run(adminKey, fnDef.path, parsed, who);
    setBusy(false);
    setResult(r);
    onRun({ at: Date.now(), path: fnDef.path, kind: fnDef.kind, ms: r.ms, ok: r.ok, error: r.error, value: r.value, args: parsed });
  }
  const modules = {};
  for (const f of functions) (modules[f.path.split(":")[0]] ||= []).push(f);
  return (
    <div className="split">
      <div className="table-list" data-testid="functions">
        {error && <div className="error">{error}</div>}
        {Object.entries(modules).map(([mod, fns]) => (
          <div key={mod}>
            <div className="module">{mod}</div>
            {fns.map((f) => (
              <div key={f.path} data-testid="function" data-path={f.path} className={selected === f.path ? "selected" : ""} onClick={() => choose(f)}>
                <span className={`kind ${f.kind}`}>{f.kind[0].toUpperCase()}</span> {f.path.split(":")[1]}
                {f.internal && <span className="badge">internal</span>}
              </div>
            ))}
          </div>
        ))}
      </div>
      <div className="grow">
        {!fnDef && <p className="muted">Pick a function to run it.</p>}
        {fnDef && (
          <div className="runner" data-testid="runner">
            <h2>
              {fnDef.path} <span className="muted">{fnDef.internal ? "internal " : ""}{fnDef.kind}</span>
            </h2>
            <div className="mono" data-testid="args-validator">
              args: {validatorText(fnDef.args)}
              {fnDef.returns && <> → {validatorText(fnDef.returns)}</>}
            </div>
            <label>Arguments (JSON)</label>
            <textarea id="fn-args" rows={6} value={args} onChange={(e) => setArgs(e.target.value)} spellCheck={false} />
            <label>Run as a user (optional identity JSON, e.g. {`{"tokenIdentifier": "x|u1", "subject": "u1", "issuer": "x"}`})</label>
            <input id="fn-identity" value={identity} onChange={(e) => setIdentity(e.target.value)} placeholder="(empty: run as the admin)" />
            <div className="buttons">
              <button id="fn-run" onClick={go} disabled={busy}>
                Run {fnDef.kind}
              </button>
            </div>
            {result && (
              <div className={result.ok ? "result ok" : "result error"} data-testid="fn-result" data-ok={String(result.ok)}>
                <div className="muted" data-testid="fn-duration">
                  {result.ok ? "success" : "error"} in {result.ms.toFixed(1)} ms
                </div>
                <pre>{result.ok ? show(result.value, 2) : result.error + (result.data !== undefined ? "\n" + show(result.data, 2) : "")}</pre>
                {result.logLines.length > 0 && (
                  <>
                    <div className="muted">log lines</div>
                    <pre data-testid="fn-log-lines">{result.logLines.join("\n")}</pre>
                  </>
                )}
              </div>
            )}
          </div>
        )}
      </div>
    </div>
  );
}

// The server's function log stream (GET /api/admin/logs, NDJSON), when this server has one.
function useServerLogs(adminKey) {
  const [entries, setEntries] = useState([]);
  const [state, setState] = useState("connecting"); // connecting | live | unavailable | error
  useEffect(() => {
    const abort = new AbortController();
    (async () => {
      try {
        const response = await fetch("/api/admin/logs?history=200&follow=1", {
          headers: { Authorization: `Convex ${adminKey}` },
          signal: abort.signal,
        });
        if (response.status === 404) return setState("unavailable");
        if (!response.ok || !response.body) return setState("error");
        setState("live");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          const lines = buffer.split("\n");
          buffer = lines.pop();
          const fresh = lines.filter((l) => l.trim()).map((l) => JSON.parse(l)).filter((e) => e.path);
          if (fresh.length) setEntries((old) => [...fresh.reverse(), ...old].slice(0, 1000));
        }
      } catch (err) {
        if (!abort.signal.aborted) setState("error");
      }
    })();
    return () => abort.abort();
  }, [adminKey]);
  return { entries, state };
}

export function LogsPage({ adminKey, runs }) {
  const [filter, setFilter] = useState("");
  const [outcome, setOutcome] = useState("all");
  const server = useServerLogs(adminKey);
  const keep = (path, ok) => path.includes(filter) && (outcome === "all" || (outcome === "ok") === ok);
  const serverShown = server.entries.filter((e) => keep(e.path, !e.error));
  const shown = runs.filter((r) => keep(r.path, r.ok));
  return (
    <div>
      <div className="toolbar">
        <input id="log-filter" placeholder="filter by path" value={filter} onChange={(e) => setFilter(e.target.value)} />
        <select id="log-outcome" value={outcome} onChange={(e) => setOutcome(e.target.value)}>
          <option value="all">all outcomes</option>
          <option value="ok">success</option>
          <option value="error">error</option>
        </select>
      </div>
      <h3>
        Function logs <span className="muted" data-testid="server-log-state">{server.state}</span>
      </h3>
      {server.state === "unavailable" ? (
        <p className="muted">This server has no function log stream (GET /api/admin/logs); the calls run from this dashboard are below.</p>
      ) : (
        <table className="rows" data-testid="server-log-lines">
          <thead>
            <tr>
              <th>time</th>
              <th>request</th>
              <th>function</th>
              <th>log lines</th>
              <th>outcome</th>
            </tr>
          </thead>
          <tbody>
            {serverShown.map((e, i) => (
              <tr key={`${e.requestId}-${i}`} data-testid="server-log-line">
                <td className="time">{formatTime(e.ts * 1000)}</td>
                <td className="mono">{e.requestId}</td>
                <td>
                  {e.kind} {e.path}
                </td>
                <td className="mono">{(e.logLines || []).join("\n")}</td>
                <td className={e.error ? "error" : "ok"}>{e.error || "success"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h3>Run from this dashboard</h3>
      <table className="rows" data-testid="log-lines">
        <thead>
          <tr>
            <th>time</th>
            <th>function</th>
            <th>duration</th>
            <th>outcome</th>
          </tr>
        </thead>
        <tbody>
          {shown.map((r, i) => (
            <tr key={i} data-testid="log-line">
              <td className="time">{formatTime(r.at)}</td>
              <td>
                {r.kind} {r.path}
              </td>
              <td>{r.ms.toFixed(1)} ms</td>
              <td className={r.ok ? "ok" : "error"}>{r.ok ? "success" : r.error}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
