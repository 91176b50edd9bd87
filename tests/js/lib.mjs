// Shared helpers for the Node scenario scripts in this directory.
//
// Every script takes ONE argument: a JSON object (or "@path/to/file.json")
// describing the scenario. The server URL comes from its "url" field, or
// else from the TAPE_URL environment variable. Scripts print one JSON object
// per line on stdout (values in Convex JSON, i.e. int64 as {"$integer": ...},
// so Python can decode them with engine.values.from_wire); client logs go
// to stderr. Exit codes: 0 success, 1 scenario failed or timed out, 2 bad usage.
import { readFileSync } from "node:fs";
import { convexToJson, jsonToConvex } from "convex/values";
import WebSocket from "ws";
import { ConvexClient, ConvexHttpClient } from "convex/browser";

/** Parse argv[2] (JSON text or @file) into the scenario config object. */
export function loadConfig(usage) {
  const raw = process.argv[2];
  if (raw === undefined || raw === "-h" || raw === "--help") {
    process.stderr.write(usage.trim() + "\n");
    process.exit(2);
  }
  let config;
  try {
    const text = raw.startsWith("@") ? readFileSync(raw.slice(1), "utf8") : raw;
    config = JSON.parse(text);
  } catch (err) {
    process.stderr.write(`bad config argument: ${err.message}\n${usage.trim()}\n`);
    process.exit(2);
  }
  if (config === null || typeof config !== "object" || Array.isArray(config)) {
    process.stderr.write(`config must be a JSON object\n${usage.trim()}\n`);
    process.exit(2);
  }
  const url = config.url ?? process.env.TAPE_URL;
  if (!url) {
    process.stderr.write(`no server URL: set "url" in the config or TAPE_URL\n`);
    process.exit(2);
  }
  config.url = url.replace(/\/+$/, "");
  return config;
}

/** Encode a client-side Convex value as Convex JSON for printing. */
export function toJson(value) {
  if (value === undefined) return null;
  try {
    return convexToJson(value);
  } catch {
    return String(value);
  }
}

/**
 * Decode function arguments given in the config as Convex JSON (so a test can
 * pass an int64 as {"$integer": "<base64>"} or bytes as {"$bytes": ...}).
 */
export function argsFrom(value) {
  return value === undefined || value === null ? {} : jsonToConvex(value);
}

let finished = false;

/** Print one JSON line on stdout (nothing after the final "done"/"failed" line). */
export function emit(event) {
  if (finished) return;
  process.stdout.write(JSON.stringify(event) + "\n");
}

/** A convex client logger that writes everything to stderr (stdout stays JSON-only). */
export const stderrLogger = {
  logVerbose: (...args) => {
    if (process.env.TAPE_JS_VERBOSE) process.stderr.write(`[convex debug] ${args.join(" ")}\n`);
  },
  log: (...args) => process.stderr.write(`[convex] ${args.join(" ")}\n`),
  warn: (...args) => process.stderr.write(`[convex warn] ${args.join(" ")}\n`),
  error: (...args) => process.stderr.write(`[convex error] ${args.join(" ")}\n`),
};

/** A WebSocket ConvexClient for Node (ws constructor, stderr logging). */
export function makeClient(url) {
  return new ConvexClient(url, {
    webSocketConstructor: WebSocket,
    logger: stderrLogger,
    unsavedChangesWarning: false,
  });
}

/** A ConvexHttpClient with stderr logging. */
export function makeHttpClient(url) {
  return new ConvexHttpClient(url, { logger: stderrLogger });
}

/** Describe a thrown error: message plus ConvexError data (Convex JSON) when present. */
export function describeError(err) {
  const out = { message: err instanceof Error ? err.message : String(err) };
  if (err && typeof err === "object" && "data" in err && err.data !== undefined) {
    out.data = toJson(err.data);
  }
  if (err && err.name) out.name = err.name;
  return out;
}

/** Deep equality of two JSON values (object key order ignored). */
export function jsonEqual(a, b) {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) return a.length === b.length && a.every((x, i) => jsonEqual(x, b[i]));
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && jsonEqual(a[k], b[k]));
}

/**
 * Number a JSON template (so reconnect.mjs can number its mutations): a
 * string that is exactly "$i" becomes the number i; "$i" inside a longer
 * string is replaced by its decimal digits ("item-$i" → "item-3").
 */
export function fillTemplate(template, i) {
  if (template === "$i") return i;
  if (typeof template === "string") return template.split("$i").join(String(i));
  if (Array.isArray(template)) return template.map((x) => fillTemplate(x, i));
  if (template !== null && typeof template === "object") {
    return Object.fromEntries(Object.entries(template).map(([k, v]) => [k, fillTemplate(v, i)]));
  }
  return template;
}

/**
 * Finish the script: close clients, print a final "done"/"timeout" line and
 * exit with `code`. Safe to call more than once (only the first call counts).
 */
let finishing = false;
export async function finish(code, clients = [], extra = {}) {
  if (finishing) return;
  finishing = true;
  emit({ event: code === 0 ? "done" : "failed", ...extra });
  finished = true;
  await Promise.race([
    Promise.allSettled(clients.map((c) => (c && typeof c.close === "function" ? c.close() : undefined))),
    new Promise((r) => setTimeout(r, 1000)),
  ]);
  process.exit(code);
}

/** Arm a timer that fails the scenario after `ms` milliseconds. */
export function armTimeout(ms, clients, describe = () => ({})) {
  const timer = setTimeout(() => {
    void finish(1, clients(), { reason: "timeout", timeoutMs: ms, ...describe() });
  }, ms);
  return timer;
}
