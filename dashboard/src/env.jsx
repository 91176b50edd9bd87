// Environment variables: list, set, remove (each change is one record in the log; functions read ctx.env).
import React, { useCallback, useEffect, useState } from "react";
import { api } from "./api.js";

function Row({ variable, onSave, onRemove }) {
  const [value, setValue] = useState(variable.value);
  const [shown, setShown] = useState(false);
  useEffect(() => setValue(variable.value), [variable.value]);
  return (
    <tr data-testid="env-var" data-name={variable.name}>
      <td className="mono">{variable.name}</td>
      <td>
        <input
          className="env-value"
          type={shown ? "text" : "password"}
          value={value}
          onChange={(e) => setValue(e.target.value)}
          onFocus={() => setShown(true)}
          onBlur={() => setShown(false)}
        />
      </td>
      <td>
        <button disabled={value === variable.value} onClick={() => onSave(variable.name, value)}>
          Save
        </button>{" "}
        <button className="danger" onClick={() => onRemove(variable.name)}>
          Remove
        </button>
      </td>
    </tr>
  );
}

export function EnvPage({ adminKey }) {
  const [variables, setVariables] = useState([]);
  const [name, setName] = useState("");
  const [value, setValue] = useState("");
  const [message, setMessage] = useState(null);
  const load = useCallback(async () => {
    try {
      setVariables((await api(adminKey, "GET", "/api/admin/env")).body.variables);
    } catch (err) {
      setMessage({ error: String(err.message || err) });
    }
  }, [adminKey]);
  useEffect(() => {
    load();
  }, [load]);
  async function change(body, done) {
    try {
      const r = await api(adminKey, "POST", "/api/admin/env", body);
      setVariables(r.body.variables);
      setMessage({ ok: `${done} (log offset ${r.body.offset})` });
      return true;
    } catch (err) {
      setMessage({ error: String(err.message || err) });
      return false;
    }
  }
  async function add(e) {
    e.preventDefault();
    if (await change({ set: { [name]: value } }, `set ${name}`)) {
      setName("");
      setValue("");
    }
  }
  return (
    <div>
      <p className="muted">
        Functions read these as <code>ctx.env["NAME"]</code> or <code>ctx.env.get("NAME")</code>. A change is stored in
        the log (restores and replicas carry it) and the next function call sees it; no restart.
      </p>
      <table className="rows" data-testid="env">
        <thead>
          <tr>
            <th>name</th>
            <th>value</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {variables.map((v) => (
            <Row
              key={v.name}
              variable={v}
              onSave={(n, val) => change({ set: { [n]: val } }, `set ${n}`)}
              onRemove={(n) => change({ remove: [n] }, `removed ${n}`)}
            />
          ))}
        </tbody>
      </table>
      <form className="toolbar" onSubmit={add}>
        <input id="env-name" placeholder="NAME" value={name} onChange={(e) => setName(e.target.value)} />
        <input id="env-value" placeholder="value" value={value} onChange={(e) => setValue(e.target.value)} />
        <button id="env-add" type="submit" disabled={!name}>
          Add variable
        </button>
      </form>
      {message && (
        <div className={message.error ? "error" : "ok"} data-testid="env-message">
          {message.error || message.ok}
        </div>
      )}
    </div>
  );
}
