// Data: tables with live rows (a `_system/dashboard:documents` subscription), schema, document edit/insert/delete.
import React, { useCallback, useEffect, useState } from "react";
import { usePaginatedQuery } from "convex/react";
import { convexToJson } from "convex/values";
import { api, fn, run, show, formatTime, validatorText } from "./api.js";

export function useTables(adminKey) {
  const [tables, setTables] = useState([]);
  const [error, setError] = useState(null);
  const reload = useCallback(async () => {
    try {
      setTables((await api(adminKey, "GET", "/api/admin/tables")).body.tables);
      setError(null);
    } catch (err) {
      setError(String(err.message || err));
    }
  }, [adminKey]);
  useEffect(() => {
    reload();
    const timer = setInterval(reload, 3000);
    return () => clearInterval(timer);
  }, [reload]);
  return { tables, error, reload };
}

function parseValue(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export function columnsOf(rows) {
  const seen = new Set();
  for (const row of rows) for (const k of Object.keys(row)) if (k !== "_id" && k !== "_creationTime") seen.add(k);
  return ["_id", ...[...seen].sort(), "_creationTime"];
}

export function Cell({ name, value }) {
  if (value === undefined) return <td className="missing" />;
  if (name === "_creationTime") return <td className="time">{formatTime(value)}</td>;
  const text = typeof value === "string" ? value : show(value);
  return <td title={text}>{text.length > 80 ? text.slice(0, 77) + "…" : text}</td>;
}

export function Rows({ rows, selected, onSelect }) {
  const columns = columnsOf(rows);
  return (
    <table className="rows" data-testid="rows">
      <thead>
        <tr>
          {columns.map((c) => (
            <th key={c}>{c}</th>
          ))}
        </tr>
      </thead>
      <tbody>
        {rows.map((row) => (
          <tr
            key={row._id}
            data-testid="row"
            data-id={row._id}
            className={selected === row._id ? "selected" : ""}
            onClick={() => onSelect && onSelect(row)}
          >
            {columns.map((c) => (
              <Cell key={c} name={c} value={row[c]} />
            ))}
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function SchemaPanel({ table }) {
  return (
    <div className="schema" data-testid="schema">
      <div>
        <b>{table.name}</b> · {table.count} document{table.count === 1 ? "" : "s"}
        {table.system && <span className="badge">system</span>}
      </div>
      <div className="mono">{table.document ? validatorText(table.document) : "no schema (any document)"}</div>
      <div className="indexes">
        Indexes:{" "}
        {Object.entries(table.indexes).map(([name, fields]) => (
          <span key={name} className="index" data-testid="index">
            {name} ({fields.join(", ")})
          </span>
        ))}
      </div>
    </div>
  );
}

function DocumentEditor({ adminKey, table, doc, onClose }) {
  const isNew = doc === null;
  const initial = isNew
    ? "{\n  \n}"
    : JSON.stringify(
        Object.fromEntries(Object.entries(convexToJson(doc)).filter(([k]) => k !== "_id" && k !== "_creationTime")),
        null,
        2,
      );
  const [text, setText] = useState(initial);
  const [message, setMessage] = useState(null);
  useEffect(() => setText(initial), [doc && doc._id]); // eslint-disable-line react-hooks/exhaustive-deps
  async function save() {
    let value;
    try {
      value = JSON.parse(text);
    } catch (err) {
      setMessage({ error: `not valid JSON: ${err.message}` });
      return;
    }
    const r = isNew
      ? await run(adminKey, "_system/dashboard:insert", { table, document: value })
      : await run(adminKey, "_system/dashboard:replace", { id: doc._id, document: value });
    setMessage(r.ok ? { ok: isNew ? `inserted ${r.value}` : "saved" } : { error: r.error });
    if (r.ok && isNew) onClose();
  }
  async function remove() {
    const r = await run(adminKey, "_system/dashboard:delete", { id: doc._id });
    if (r.ok) onClose();
    else setMessage({ error: r.error });
  }
  return (
    <div className="editor" data-testid="editor">
      <div className="editor-head">
        <b>{isNew ? `New document in ${table}` : doc._id}</b>
        {!isNew && <span className="muted"> created {formatTime(doc._creationTime)}</span>}
        <button onClick={onClose} className="link">
          close
        </button>
      </div>
      <textarea id="doc-json" rows={12} value={text} onChange={(e) => setText(e.target.value)} spellCheck={false} />
      <div className="buttons">
        <button id="doc-save" onClick={save}>
          {isNew ? "Insert" : "Save"}
        </button>
        {!isNew && (
          <button id="doc-delete" className="danger" onClick={remove}>
            Delete
          </button>
        )}
        {message && (
          <span className={message.error ? "error" : "ok"} data-testid="doc-message">
            {message.error || message.ok}
          </span>
        )}
      </div>
    </div>
  );
}

function TableView({ adminKey, table }) {
  const [index, setIndex] = useState("by_creation_time");
  const [order, setOrder] = useState("asc");
  const [filterField, setFilterField] = useState("");
  const [filterValue, setFilterValue] = useState("");
  const [editing, setEditing] = useState(undefined); // undefined: none, null: new, doc
  useEffect(() => {
    setIndex("by_creation_time");
    setEditing(undefined);
    setFilterField("");
    setFilterValue("");
  }, [table.name]);
  const args = { table: table.name, index, order };
  if (filterField) args.filter = { field: filterField, value: parseValue(filterValue) };
  const { results, status, loadMore } = usePaginatedQuery(fn.documents, args, { initialNumItems: 50 });
  const current = editing && results.find((r) => r._id === editing._id);
  return (
    <div className="table-view">
      <SchemaPanel table={table} />
      <div className="toolbar">
        <label>
          index{" "}
          <select id="index" value={index} onChange={(e) => setIndex(e.target.value)}>
            {Object.keys(table.indexes).map((name) => (
              <option key={name}>{name}</option>
            ))}
          </select>
        </label>
        <label>
          order{" "}
          <select id="order" value={order} onChange={(e) => setOrder(e.target.value)}>
            <option>asc</option>
            <option>desc</option>
          </select>
        </label>
        <label>
          where <input id="filter-field" placeholder="field" value={filterField} onChange={(e) => setFilterField(e.target.value)} />
        </label>
        ={" "}
        <input id="filter-value" placeholder="value (JSON)" value={filterValue} onChange={(e) => setFilterValue(e.target.value)} />
        {!table.system && (
          <button id="doc-new" onClick={() => setEditing(null)}>
            + Insert
          </button>
        )}
        <span className="muted" data-testid="row-status">
          {results.length} row{results.length === 1 ? "" : "s"} {status === "LoadingFirstPage" ? "(loading)" : "· live"}
        </span>
      </div>
      {editing !== undefined && !table.system && (
        <DocumentEditor adminKey={adminKey} table={table.name} doc={editing === null ? null : current || editing} onClose={() => setEditing(undefined)} />
      )}
      {editing && table.system && (
        <div className="editor" data-testid="viewer">
          <div className="editor-head">
            <b>{editing._id}</b> <span className="muted">system document (read-only)</span>
            <button onClick={() => setEditing(undefined)} className="link">
              close
            </button>
          </div>
          <pre>{show(current || editing, 2)}</pre>
        </div>
      )}
      <Rows rows={results} selected={editing && editing._id} onSelect={(row) => setEditing(row)} />
      {status === "CanLoadMore" && (
        <button id="load-more" onClick={() => loadMore(50)}>
          Load more
        </button>
      )}
    </div>
  );
}

export function TableList({ tables, selected, onSelect, showSystem, setShowSystem }) {
  return (
    <div className="table-list" data-testid="tables">
      {tables
        .filter((t) => showSystem || !t.system)
        .map((t) => (
          <div
            key={t.name}
            data-testid="table"
            data-table={t.name}
            className={selected === t.name ? "selected" : ""}
            onClick={() => onSelect(t.name)}
          >
            {t.name} <span className="muted">{t.count}</span>
          </div>
        ))}
      <label className="muted small">
        <input type="checkbox" checked={showSystem} onChange={(e) => setShowSystem(e.target.checked)} /> system tables
      </label>
    </div>
  );
}

export function DataPage({ adminKey }) {
  const { tables, error } = useTables(adminKey);
  const [selected, setSelected] = useState(null);
  const [showSystem, setShowSystem] = useState(false);
  const visible = tables.filter((t) => showSystem || !t.system);
  const name = selected || (visible[0] && visible[0].name);
  const table = tables.find((t) => t.name === name);
  return (
    <div className="split">
      <TableList tables={tables} selected={name} onSelect={setSelected} showSystem={showSystem} setShowSystem={setShowSystem} />
      <div className="grow">
        {error && <div className="error">{error}</div>}
        {table ? <TableView adminKey={adminKey} table={table} /> : <p className="muted">No tables yet.</p>}
      </div>
    </div>
  );
}
