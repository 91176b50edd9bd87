"""Collecting orphan blobs: bytes no `_storage` document in the whole log ever named.

A blob becomes an orphan when its upload was stopped between the blob's
fsync and the commit of its document (a crash, a stop, a refused commit).
Blobs of deleted files are *not* orphans: the log keeps all history, so a
restore to a point before the delete needs them, and they are kept. Since an
orphan's key appears in no record, removing it changes no state any log
position describes: the collection needs no record of its own and replays
identically. It must run with no server writing (an upload in flight is an
orphan until its commit lands): callers hold the log's writer lock.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from log.base import Log
from storage.blobs import STORAGE_TABLE, BlobError, LocalBlobStore, key_of
from values import decode_doc


async def keys_in_log(log: Log) -> set[str]:
    """The blob key of every `_storage` document any record of `log` wrote."""
    keys: set[str] = set()
    async for records in log.read(0):
        for record in records:
            for write in record.writes:
                if write.table == STORAGE_TABLE and write.doc is not None:
                    try:
                        keys.add(key_of(decode_doc(write.doc)))
                    except BlobError:
                        continue  # a document without a valid sha256 names no blob
    return keys


@dataclass
class Collection:
    """What `collect_orphans` found and removed."""

    named: int = 0  # distinct blobs the log names
    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0


async def collect_orphans(log: Log, store: LocalBlobStore, *, dry_run: bool = False) -> Collection:
    """Remove every blob of `store` that no `_storage` document in `log` names (see the module docstring)."""
    named = await keys_in_log(log)
    result = Collection(named=len(named))
    for key in list(store.keys()):
        if key in named:
            continue
        result.bytes_freed += store.size(key) or 0
        result.removed.append(key)
        if not dry_run:
            store.delete(key)
    if not dry_run:
        store.clear_temporary()
    return result
