"""`tape codegen`: the generated api.d.ts / dataModel.d.ts type-check a TypeScript app with tsc; api.js works."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from engine.validators import v
from ops.cli import main
from ops.codegen_cmd import ts_type

TESTS = Path(__file__).resolve().parents[1]
APPS = TESTS / "apps"
NODE_MODULES = TESTS / "js" / "node_modules"

APP_TS = """
import { ConvexHttpClient } from "convex/browser";
import { useMutation, useQuery } from "convex/react";
import { api, internal } from "./convex/_generated/api";
import type { DataModel, Doc, Id, TableNames } from "./convex/_generated/dataModel";

export async function main(client: ConvexHttpClient): Promise<void> {
  const rows = await client.query(api.messages.list, { channel: "general" });
  const body: string = rows[0].body;
  const likes: bigint = rows[0].likes;
  const id: Id<"messages"> = await client.mutation(api.messages.send, { channel: "c", author: "a", body: "b" });
  await client.mutation(api.messages.send, { channel: "c", author: "a", body: "b", tags: ["x"] });
  const totals = await client.query(api.admin.stats.totals, {});
  const n: bigint = totals.n;
  const kind: "a" | "b" = totals.kind;
  const ratio: number | undefined = totals.ratio;
  const untyped: any = await client.query(api.messages.count, {});
  const doc: Doc<"messages"> = { _id: id, _creationTime: 1, channel: "c", author: "a", body: "b", likes: 0n };
  const note: Doc<"notes"> = { _id: "x" as Id<"notes">, _creationTime: 1, anything: [1, "two"] };
  const table: TableNames = "notes";
  const purge = internal.messages.purge;
  type ByChannel = DataModel["messages"]["indexes"]["by_channel"];
  const fields: ByChannel = ["channel", "_creationTime"];
  // @ts-expect-error body must be a string
  await client.mutation(api.messages.send, { channel: "c", author: "a", body: 5 });
  // @ts-expect-error channel is required
  await client.query(api.messages.list, {});
  // @ts-expect-error there is no such function
  api.messages.nope;
  // @ts-expect-error the result of list is an array of messages, not a string
  const wrong: string = await client.query(api.messages.list, { channel: "c" });
  // @ts-expect-error an id of another table
  const other: Id<"notes"> = id;
  console.log(body, likes, n, kind, ratio, untyped, doc, note, table, purge, fields, wrong, other);
}

export function useFirstAuthor(channel: string): string | undefined {
  const rows = useQuery(api.messages.list, { channel });  // typed: Array<{author, body, likes}> | undefined
  const send = useMutation(api.messages.send);
  void send({ channel, author: "me", body: "hi" });
  // @ts-expect-error the React hooks check arguments too
  useQuery(api.messages.list, { channel: 1 });
  return rows?.[0]?.author;
}
"""

RUN_JS = """
import { getFunctionName } from "convex/server";
import { api, internal } from "./convex/_generated/api.js";
console.log(JSON.stringify([getFunctionName(api.messages.list), getFunctionName(api.admin.stats.totals),
                            getFunctionName(internal.messages.purge)]));
"""


def test_ts_types_of_validators() -> None:
    assert ts_type(v.optional(v.array(v.int64()))) == "Array<bigint> | undefined"
    assert ts_type(v.union(v.literal(1), v.literal("x"), v.null())) == '(1n) | ("x") | (null)'
    assert ts_type(v.object({"a-b": v.number(), "c": v.optional(v.id("t"))})) == '{ "a-b": number; c?: Id<"t"> }'
    assert ts_type(v.record(v.string(), v.bytes())) == "Record<string, ArrayBuffer>"


def test_generated_types_compile_with_tsc_and_api_js_names_functions(tmp_path: Path) -> None:
    project = tmp_path / "app"
    (project / "convex").mkdir(parents=True)
    assert main(["codegen", str(APPS / "typed"), "--out", str(project / "convex" / "_generated")]) == 0
    assert sorted(p.name for p in (project / "convex" / "_generated").iterdir()) == ["api.d.ts", "api.js",
                                                                                     "dataModel.d.ts"]
    (project / "node_modules").symlink_to(NODE_MODULES)
    (project / "package.json").write_text(json.dumps({"type": "module", "private": True}))
    (project / "main.ts").write_text(APP_TS)
    (project / "tsconfig.json").write_text(json.dumps({"compilerOptions": {
        "strict": True, "noEmit": True, "target": "ES2022", "module": "ESNext", "moduleResolution": "Bundler",
        "skipLibCheck": True, "lib": ["ES2022", "DOM"], "noUnusedLocals": False}, "files": ["main.ts"]}))
    tsc = subprocess.run([str(NODE_MODULES / ".bin" / "tsc"), "-p", str(project)], cwd=project,
                         capture_output=True, text=True, timeout=120)
    assert tsc.returncode == 0, tsc.stdout + tsc.stderr
    (project / "run.mjs").write_text(RUN_JS)
    node = subprocess.run(["node", "run.mjs"], cwd=project, capture_output=True, text=True, timeout=60)
    assert node.returncode == 0, node.stderr
    assert json.loads(node.stdout) == ["messages:list", "admin/stats:totals", "messages:purge"]


def test_a_type_error_fails_tsc(tmp_path: Path) -> None:
    """The check is real: a call with a wrong argument type does not compile."""
    project = tmp_path / "app"
    assert main(["codegen", str(APPS / "typed"), "--out", str(project / "gen")]) == 0
    (project / "node_modules").symlink_to(NODE_MODULES)
    (project / "bad.ts").write_text('import { ConvexHttpClient } from "convex/browser";\n'
                                    'import { api } from "./gen/api";\n'
                                    'export const p = new ConvexHttpClient("http://x").query(api.messages.list, '
                                    '{ channel: 1 });\n')
    tsc = subprocess.run([str(NODE_MODULES / ".bin" / "tsc"), "--noEmit", "--strict", "--skipLibCheck",
                          "--moduleResolution", "bundler", "--module", "esnext", "--target", "es2022", "bad.ts"],
                         cwd=project, capture_output=True, text=True, timeout=120)
    assert tsc.returncode != 0 and "bad.ts(3," in tsc.stdout and "'number' is not assignable to type 'string'" in tsc.stdout


def test_codegen_of_a_missing_app_is_a_clear_error(tmp_path: Path, capsys: object) -> None:
    assert main(["codegen", str(tmp_path / "nope")]) == 1
