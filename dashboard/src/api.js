// The admin HTTP endpoints the dashboard calls (every one with `Authorization: Convex <admin key>`).
import { makeFunctionReference } from "convex/server";

export const KEY_STORAGE = "tape.adminKey";

export const fn = {
  documents: makeFunctionReference("_system/dashboard:documents"),
};

export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.message || body.errorMessage)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export async function api(key, method, path, body, authSuffix = "") {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Convex ${key}${authSuffix}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let parsed = null;
  try {
    parsed = await response.json();
  } catch {
    parsed = null;
  }
  if (!response.ok && !(parsed && parsed.status === "error")) throw new ApiError(response.status, parsed);
  return { status: response.status, body: parsed };
}

// Run any function as the admin (or as a user: `identity` is a JSON object) through POST /api/admin/run.
export async function run(key, path, args, identity) {
  const suffix = identity ? ":" + btoa(unescape(encodeURIComponent(JSON.stringify(identity)))) : "";
  const started = performance.now();
  const { status, body } = await api(key, "POST", "/api/admin/run", { path, args }, suffix);
  const ms = performance.now() - started;
  const logLines = (body && body.logLines) || [];
  if (body && body.status === "success") return { ok: true, value: body.value, ms, status, logLines };
  return { ok: false, error: (body && (body.errorMessage || body.message)) || `HTTP ${status}`, data: body && body.errorData, ms, status, logLines };
}

// A Convex value (as the JS client decodes it) as readable text: bigints, bytes, nested objects.
export function show(value, indent) {
  return JSON.stringify(
    value,
    (_k, v) => {
      if (typeof v === "bigint") return `${v}n`;
      if (v instanceof ArrayBuffer) return `<${v.byteLength} bytes>`;
      return v;
    },
    indent,
  );
}

export function formatTime(ms) {
  if (ms === undefined || ms === null) return "";
  const d = new Date(Number(ms));
  return d.toISOString().replace("T", " ").replace("Z", "");
}

// A validator (Convex JSON shape) as TypeScript-like text: v.object({a: v.string()}) -> { a: string }.
export function validatorText(v) {
  if (!v) return "any";
  switch (v.type) {
    case "object":
      return `{ ${Object.entries(v.value)
        .map(([k, f]) => `${k}${f.optional ? "?" : ""}: ${validatorText(f.fieldType)}`)
        .join(", ")} }`;
    case "array":
      return `${validatorText(v.value)}[]`;
    case "record":
      return `Record<${validatorText(v.keys)}, ${validatorText(v.values.fieldType)}>`;
    case "union":
      return v.value.map(validatorText).join(" | ");
    case "literal":
      return JSON.stringify(v.value);
    case "id":
      return `Id<"${v.tableName}">`;
    default:
      return v.type;
  }
}

// Example arguments for a function from its args validator (required fields only).
export function exampleArgs(v) {
  if (!v || v.type !== "object") return {};
  const out = {};
  for (const [k, f] of Object.entries(v.value)) if (!f.optional) out[k] = exampleValue(f.fieldType);
  return out;
}

function exampleValue(v) {
  switch (v.type) {
    case "string":
      return "";
    case "number":
      return 0;
    case "boolean":
      return false;
    case "array":
      return [];
    case "object":
      return exampleArgs(v);
    case "literal":
      return v.value;
    case "union":
      return exampleValue(v.value[0]);
    case "null":
      return null;
    default:
      return null;
  }
}
