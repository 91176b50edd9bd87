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
              </div>
            )}
          </div>
        )}
      </div>
    </div>
  );
}

export function LogsPage({ runs }) {
  const [filter, setFilter] = useState("");
  const [outcome, setOutcome] = useState("all");
  const shown = runs.filter(
    (r) => r.path.includes(filter) && (outcome === "all" || (outcome === "ok") === r.ok),
  );
  return (
    <div>
      <p className="muted">
        Function calls run from this dashboard (path, duration, outcome). The deployment-wide live log stream (every
        request with its log lines) comes with the server's function log endpoint.
      </p>
      <div className="toolbar">
        <input id="log-filter" placeholder="filter by path" value={filter} onChange={(e) => setFilter(e.target.value)} />
        <select value={outcome} onChange={(e) => setOutcome(e.target.value)}>
          <option value="all">all outcomes</option>
          <option value="ok">success</option>
          <option value="error">error</option>
        </select>
      </div>
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
