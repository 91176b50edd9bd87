"""Blob storage for files (`ctx.storage`): the `BlobStore` interface and its local, content-addressed disk store.

A layer of its own between log/ and projections/: it imports only values/ and
log/ (for `fsync_dir`); history/ (export, import, restore), engine/
(`ctx.storage`), gateway/ (upload and download routes) and ops/ (`tape doctor`)
build on it.
"""
from storage.blobs import (BLOBS_DIR, STORAGE_TABLE, BlobError, BlobInfo, BlobMissing, BlobStore, BlobTooLarge,
                           BlobWriter, LocalBlobStore, blob_key, key_from_sha256_base64, key_of, link_store)

__all__ = ["BLOBS_DIR", "STORAGE_TABLE", "BlobError", "BlobInfo", "BlobMissing", "BlobStore", "BlobTooLarge",
           "BlobWriter", "LocalBlobStore", "blob_key", "key_from_sha256_base64", "key_of", "link_store"]
