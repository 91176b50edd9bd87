// upload_file.mjs - the Convex upload flow with the official client: a mutation returns an upload URL,
// `fetch` POSTs the file there, a mutation stores the returned storage id; a live query lists the file
// with its URL, and fetching that URL gives the bytes back.
//
// Usage:
//   node upload_file.mjs '{"url": "...", "size": 200000, "contentType": "image/png"}'
//
// Output (JSON lines on stdout):
//   {"event":"uploaded","status":200,"storageId":"..."}
//   {"event":"update","files":[...]}                    every onUpdate of files:listing
//   {"event":"done","storageId":"...","fileUrl":"...","bytes":N,"contentType":"...","etag":"..."}
//   {"event":"failed",...}                              exit 1
import { armTimeout, describeError, emit, finish, loadConfig, makeClient } from "./lib.mjs";

const USAGE = `
usage: node upload_file.mjs '{"url":"http://127.0.0.1:8000","size":200000,"contentType":"image/png"}'
`;

const config = loadConfig(USAGE);
const client = makeClient(config.url);
armTimeout(config.timeoutMs ?? 20000, () => [client]);

const size = config.size ?? 100000;
const body = new Uint8Array(size);
for (let i = 0; i < size; i++) body[i] = (i * 31 + 7) & 0xff;
let storageId = null;

async function main() {
  const postUrl = await client.mutation("files:generate_upload_url", {});
  const result = await fetch(postUrl, {
    method: "POST",
    headers: { "Content-Type": config.contentType ?? "image/png" },
    body,
  });
  const answer = await result.json();
  emit({ event: "uploaded", status: result.status, storageId: answer.storageId });
  if (result.status !== 200) return finish(1, [client], { answer });
  storageId = answer.storageId;
  await client.mutation("files:save", { storage_id: storageId, name: "upload.png" });
}

client.onUpdate("files:listing", {}, async (files) => {
  emit({ event: "update", files });
  const mine = files.find((f) => f.storage_id === storageId);
  if (!mine || !mine.url) return;
  const got = await fetch(mine.url);
  const bytes = new Uint8Array(await got.arrayBuffer());
  const same = bytes.length === body.length && bytes.every((b, i) => b === body[i]);
  if (!same) return finish(1, [client], { reason: "downloaded bytes differ", length: bytes.length });
  await finish(0, [client], { storageId, fileUrl: mine.url, bytes: bytes.length,
                              contentType: got.headers.get("content-type"), etag: got.headers.get("etag"),
                              size: mine.size });
}, (err) => { emit({ event: "query_error", error: describeError(err) }); finish(1, [client]); });

main().catch((err) => { emit({ event: "error", error: describeError(err) }); finish(1, [client]); });
