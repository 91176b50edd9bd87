// Tape's dashboard: sign in with the admin key, then Data, Functions, Scheduled, History, Environment, Health, Logs.
import React, { useEffect, useMemo, useState } from "react";
import { createRoot } from "react-dom/client";
import { ConvexProvider, ConvexReactClient } from "convex/react";
import { KEY_STORAGE, api } from "./api.js";
import { DataPage } from "./data.jsx";
import { FunctionsPage, LogsPage } from "./functions.jsx";
import { ScheduledPage } from "./scheduled.jsx";
import { HistoryPage } from "./history.jsx";
import { EnvPage } from "./env.jsx";
import { HealthPage } from "./health.jsx";

const PAGES = [
  ["data", "Data"],
  ["functions", "Functions"],
  ["logs", "Logs"],
  ["scheduled", "Scheduled jobs"],
  ["history", "History"],
  ["env", "Environment variables"],
  ["health", "Health"],
];

function SignIn({ onKey }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  async function submit(e) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api(key.trim(), "GET", "/api/admin/stats");
      sessionStorage.setItem(KEY_STORAGE, key.trim());
      onKey(key.trim());
    } catch (err) {
      setError(err.status === 401 ? "That is not this deployment's admin key." : String(err.message || err));
    } finally {
      setBusy(false);
    }
  }
  return (
    <form className="signin" onSubmit={submit} data-testid="signin">
      <h1>Tape dashboard</h1>
      <p>
        Sign in with the deployment's admin key (printed at the first start; stored in <code>DATA_DIR/admin_key</code>).
        It is kept in this tab only (sessionStorage).
      </p>
      <input id="admin-key" type="password" autoFocus placeholder="tape_admin_…" value={key} onChange={(e) => setKey(e.target.value)} />
      <button id="sign-in" type="submit" disabled={busy || !key.trim()}>
        Sign in
      </button>
      {error && <div className="error" data-testid="signin-error">{error}</div>}
    </form>
  );
}

function pageFromHash() {
  const name = location.hash.replace(/^#\/?/, "").split("?")[0];
  return PAGES.some(([id]) => id === name) ? name : "data";
}

function Shell({ adminKey, onSignOut }) {
  const client = useMemo(() => {
    const c = new ConvexReactClient(location.origin, { skipConvexDeploymentUrlCheck: true, unsavedChangesWarning: false });
    c.setAdminAuth(adminKey);
    return c;
  }, [adminKey]);
  useEffect(() => () => client.close(), [client]);
  const [page, setPage] = useState(pageFromHash());
  const [runs, setRuns] = useState([]);
  useEffect(() => {
    const onHash = () => setPage(pageFromHash());
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);
  const addRun = (r) => setRuns((old) => [r, ...old].slice(0, 200));
  return (
    <ConvexProvider client={client}>
      <div className="shell">
        <nav>
          <div className="brand">Tape</div>
          {PAGES.map(([id, label]) => (
            <a key={id} href={`#${id}`} data-testid={`nav-${id}`} className={page === id ? "active" : ""}>
              {label}
            </a>
          ))}
          <button className="signout" onClick={onSignOut} data-testid="sign-out">
            Sign out
          </button>
        </nav>
        <main data-page={page}>
          {page === "data" && <DataPage adminKey={adminKey} />}
          {page === "functions" && <FunctionsPage adminKey={adminKey} onRun={addRun} />}
          {page === "logs" && <LogsPage adminKey={adminKey} runs={runs} />}
          {page === "scheduled" && <ScheduledPage adminKey={adminKey} />}
          {page === "history" && <HistoryPage adminKey={adminKey} />}
          {page === "env" && <EnvPage adminKey={adminKey} />}
          {page === "health" && <HealthPage adminKey={adminKey} />}
        </main>
      </div>
    </ConvexProvider>
  );
}

function App() {
  const [key, setKey] = useState(() => sessionStorage.getItem(KEY_STORAGE));
  const signOut = () => {
    sessionStorage.removeItem(KEY_STORAGE);
    setKey(null);
  };
  useEffect(() => {
    document.body.dataset.ready = "true";
  }, []);
  return key ? <Shell adminKey={key} onSignOut={signOut} /> : <SignIn onKey={setKey} />;
}

createRoot(document.getElementById("root")).render(<App />);
