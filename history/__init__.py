"""The history of a deployment: rewinding, copying and streaming what its commit log holds.

One concept per module, each built on `values`, `log` and `projections` only:

* `history.errors`   — RestoreError, StreamError, SnapshotError.
* `history.progress` — the progress hooks (Reporter, Task) the long operations report to.
* `history.points`   — points in time (``offset:N``, ``ts:N``, ISO-8601, ``end``) and resolving them.
* `history.archive`  — Avro archives of log records and `ArchiveLog`, a read-only `Log` over one.
* `history.sources`  — opening a data directory, a log directory, a log URL or an archive as a source.
* `history.segments` — copying a prefix of a log into a new FileLog (verified segment bytes, or records).
* `history.build`    — a projection as of a past offset (nearest checkpoint + replay).
* `history.restore`  — point-in-time restore into a new directory or in place.
* `history.sinks`    — where change events go: JSON lines, Avro container files, Kafka.
* `history.stream`   — the change-stream export loop, its resumable position and start offsets.
* `history.snapshot` — consistent snapshots of every table as Avro files, and importing them.
* `history.convex_ids` — Convex document ids, and their one-to-one mapping to Tape ids.
* `history.convex_zip` — Convex snapshot ZIPs: export to `npx convex import`, import of `npx convex export`.
"""
