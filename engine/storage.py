"""File storage: `ctx.storage`, upload URLs, and the `_storage` system table.

A stored file is a blob in the node's `storage.BlobStore` (content-addressed,
fsynced) plus a document of the `_storage` system table (Convex's fields:
``sha256`` in base64, ``size``, ``contentType`` when known, ``_creationTime``),
committed through the log like every write, so it is reactive (read it with
``ctx.db.system``), replayed, restored and exported with everything else.

Uploads: ``ctx.storage.generate_upload_url()`` signs a short-lived token
(`UploadToken`: a pre-allocated `_storage` id and an expiry, HMAC-SHA256 with
the deployment's secret). The client POSTs the file to that URL; `FileStorage.receive`
streams it into the blob store (fsynced), then commits the `_storage` document
at the token's id with `InsertAt`, and only then answers ``{"storageId"}``. A
crash before the commit leaves an unreferenced blob and no id; a token is used
at most once (a second commit at its id writes nothing), also across restarts.

Deleting a file deletes its document; the blob stays, so a restore to an
earlier point still finds the bytes of every document it brings back.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterable, Awaitable, Callable, Coroutine

from engine.db import DatabaseReader, DatabaseWriter
from engine.errors import ArgumentError, EngineError
from engine.system_updates import REMOVE, InsertAt
from storage import STORAGE_TABLE, BlobError, BlobInfo, BlobMissing, BlobStore, BlobTooLarge, key_of
from values import decode_doc, new_id, table_of

if TYPE_CHECKING:
    from engine.committer import Committer
    from projections.types import DocumentReader

STORAGE_FUNCTION = "_system:storage"  # `function` of the records that store and delete files
UPLOAD_PATH = "/api/storage/upload"
DOWNLOAD_PREFIX = "/api/storage/"
DEFAULT_UPLOAD_TTL = 3600.0  # seconds an upload URL is valid (as in Convex)
DEFAULT_MAX_UPLOAD_BYTES = 1 << 30


class StorageError(EngineError):
    """A storage request refused: `status` is its HTTP status, `code` a short name."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def check_storage_id(storage_id: Any, what: str = "storage id") -> str:
    """`storage_id` if it is an id of `_storage`; ArgumentError otherwise."""
    if table_of(storage_id) != STORAGE_TABLE:
        raise ArgumentError(f"{what}: expected an id of _storage, got {storage_id!r}")
    return storage_id


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class UploadToken:
    """What an upload URL's token carries: the `_storage` id it will create and its expiry (epoch seconds)."""

    storage_id: str
    expires: int

    def sign(self, secret: bytes) -> str:
        body = f"{self.storage_id}.{self.expires}".encode()
        return _b64(body) + "." + _b64(hmac.new(secret, body, hashlib.sha256).digest())

    @staticmethod
    def verify(token: Any, secret: bytes, now: float | None = None) -> "UploadToken":
        """The token's content if its signature is this deployment's and it has not expired; StorageError else."""
        if not isinstance(token, str) or not token or len(token) > 512 or token.count(".") != 1:
            raise StorageError("the upload URL has no valid token", 400, "InvalidUploadToken")
        body_b64, sig_b64 = token.split(".")
        try:
            body = base64.urlsafe_b64decode(body_b64 + "=" * (-len(body_b64) % 4))
            sig = base64.urlsafe_b64decode(sig_b64 + "=" * (-len(sig_b64) % 4))
        except (ValueError, TypeError):
            raise StorageError("the upload URL has no valid token", 400, "InvalidUploadToken") from None
        if not hmac.compare_digest(sig, hmac.new(secret, body, hashlib.sha256).digest()):
            raise StorageError("the upload URL was not issued by this deployment", 403, "InvalidUploadToken")
        storage_id, _, expires = body.decode("ascii", "replace").partition(".")
        if table_of(storage_id) != STORAGE_TABLE or not expires.isdigit():
            raise StorageError("the upload URL has no valid token", 400, "InvalidUploadToken")
        if int(expires) < (time.time() if now is None else now):
            raise StorageError("the upload URL has expired: generate a new one", 410, "UploadUrlExpired")
        return UploadToken(storage_id, int(expires))


class FileStorage:
    """A node's file storage: blobs, upload tokens, and the commits of `_storage` documents."""

    def __init__(self, blobs: BlobStore, committer: "Committer | None", secret: bytes, base_url: str, *,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, upload_ttl: float = DEFAULT_UPLOAD_TTL,
                 reader: "DocumentReader | None" = None) -> None:
        self.blobs = blobs
        self._committer = committer
        self._reader = reader  # the live state: a token whose file exists is refused before any byte is read
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self.max_upload_bytes = max_upload_bytes
        self.upload_ttl = upload_ttl
        self._claimed: dict[str, int] = {}  # storage id -> expiry, for tokens being (or already) used here
        self._purge_at = 10_000

    # -- URLs ------------------------------------------------------------------------------
    def upload_url(self) -> str:
        """A new single-use upload URL, valid for `upload_ttl` seconds."""
        token = UploadToken(new_id(STORAGE_TABLE), int(time.time() + self.upload_ttl))
        return f"{self.base_url}{UPLOAD_PATH}?token={token.sign(self._secret)}"

    def file_url(self, storage_id: str) -> str:
        """The URL serving a stored file."""
        return f"{self.base_url}{DOWNLOAD_PREFIX}{storage_id}"

    # -- writes ----------------------------------------------------------------------------
    def _commit(self, updates: list[Any]) -> Coroutine[Any, Any, list[str]]:
        if self._committer is None:
            raise StorageError("files are stored on the committer; this node cannot store them", 503, "NotCommitter")
        return self._committer.system_update(STORAGE_FUNCTION, updates)

    def _claim(self, token: UploadToken) -> None:
        if len(self._claimed) > self._purge_at:  # drop expired claims, now and then (not on every upload)
            now = time.time()
            self._claimed = {k: exp for k, exp in self._claimed.items() if exp >= now}
            self._purge_at = max(10_000, 2 * len(self._claimed))
        if token.storage_id in self._claimed:
            raise StorageError("this upload URL has already been used: generate a new one", 409, "UploadUrlUsed")
        self._claimed[token.storage_id] = token.expires

    async def receive(self, token_text: Any, chunks: AsyncIterable[bytes], content_type: str | None) -> str:
        """Store an upload: the blob (durable) then its `_storage` document; returns the storage id.

        Refusals are `StorageError`s; a failed or interrupted upload stores nothing and frees its token.
        """
        token = UploadToken.verify(token_text, self._secret)
        if self._reader is not None and self._reader.get(token.storage_id) is not None:
            raise StorageError("this upload URL has already been used: generate a new one", 409, "UploadUrlUsed")
        self._claim(token)
        try:
            try:
                info = await self.blobs.put(chunks, self.max_upload_bytes)
            except BlobTooLarge as exc:
                raise StorageError(str(exc), 413, "PayloadTooLarge") from None
            written = await self._commit([(STORAGE_TABLE, token.storage_id,
                                           InsertAt(storage_fields(info.sha256_base64, info.size, content_type)))])
        except BaseException:
            self._claimed.pop(token.storage_id, None)
            raise
        if not written:
            raise StorageError("this upload URL has already been used: generate a new one", 409, "UploadUrlUsed")
        return token.storage_id

    async def commit_new(self, info: BlobInfo, content_type: str | None) -> str:
        """Commit the `_storage` document of a blob already stored (durable); returns the new storage id."""
        written = await self._commit([(STORAGE_TABLE, None,
                                       lambda _doc: storage_fields(info.sha256_base64, info.size, content_type))])
        return written[0]

    async def delete(self, storage_id: str) -> None:
        """Delete a file's document in its own record (actions); ArgumentError if there is none."""
        written = await self._commit([(STORAGE_TABLE, check_storage_id(storage_id), lambda _doc: REMOVE)])
        if not written:
            raise ArgumentError(f"storage.delete: no stored file has id {storage_id!r}")

    # -- reads -----------------------------------------------------------------------------
    def document(self, reader: "DocumentReader", storage_id: Any) -> dict[str, Any] | None:
        """The `_storage` document of `storage_id` in `reader`, or None (also for ids of other tables)."""
        if table_of(storage_id) != STORAGE_TABLE:
            return None
        raw = reader.get(storage_id)
        return decode_doc(raw) if raw is not None else None

    def blob_key(self, doc: dict[str, Any]) -> str:
        """The blob key of a `_storage` document (EngineError if it holds no valid sha256)."""
        try:
            return key_of(doc)
        except BlobError as exc:
            raise EngineError(f"_storage document {doc.get('_id')}: {exc}") from None

    def read_bytes(self, doc: dict[str, Any]) -> bytes:
        """The whole file of a `_storage` document (blocking); EngineError if its blob is missing."""
        try:
            with self.blobs.open(self.blob_key(doc)) as f:
                return f.read()
        except BlobMissing as exc:
            raise EngineError(f"stored file {doc['_id']}: {exc}") from None


def storage_fields(sha256_base64: str, size: int, content_type: str | None) -> dict[str, Any]:
    """A `_storage` document's fields (without `_id` / `_creationTime`)."""
    fields: dict[str, Any] = {"sha256": sha256_base64, "size": float(size)}  # a JS number, as in Convex
    if content_type:
        fields["contentType"] = content_type
    return fields


def _service(service: FileStorage | None) -> FileStorage:
    if service is None:
        raise EngineError("file storage is not available here (it is served by a running node)")
    return service


class QueryStorage:
    """`ctx.storage` in a query: `get_url`."""

    def __init__(self, service: FileStorage | None, db: DatabaseReader) -> None:
        self._service = service
        self._db = db

    async def get_url(self, storage_id: str) -> str | None:
        """The URL serving the file, or None if no file has this id (the read is tracked: reactive)."""
        doc = await self._db.system.get(check_storage_id(storage_id, "storage.get_url"))
        return _service(self._service).file_url(storage_id) if doc is not None else None


class MutationStorage(QueryStorage):
    """`ctx.storage` in a mutation: `generate_upload_url`, `get_url`, `delete` (in this transaction)."""

    _db: DatabaseWriter

    async def generate_upload_url(self) -> str:
        """A short-lived (1 hour), single-use URL the client POSTs a file to; it answers ``{"storageId"}``."""
        return _service(self._service).upload_url()

    async def delete(self, storage_id: str) -> None:
        """Delete the file (its `_storage` document) in this transaction."""
        if not self._db.system_delete(check_storage_id(storage_id, "storage.delete")):
            raise ArgumentError(f"storage.delete: no stored file has id {storage_id!r}")


class ActionStorage:
    """`ctx.storage` in an action: also `store` and `get`; each write commits on its own."""

    def __init__(self, service: FileStorage | None, reader: "DocumentReader",
                 on_server: Callable[[Coroutine[Any, Any, Any]], Awaitable[Any]]) -> None:
        self._service = service
        self._reader = reader
        self._on_server = on_server

    async def _document(self, storage_id: str) -> dict[str, Any] | None:
        async def lookup() -> dict[str, Any] | None:
            return _service(self._service).document(self._reader, storage_id)
        return await self._on_server(lookup())

    async def generate_upload_url(self) -> str:
        """A short-lived, single-use upload URL (see `MutationStorage.generate_upload_url`)."""
        return _service(self._service).upload_url()

    async def get_url(self, storage_id: str) -> str | None:
        """The URL serving the file, or None if no file has this id."""
        doc = await self._document(check_storage_id(storage_id, "storage.get_url"))
        return _service(self._service).file_url(storage_id) if doc is not None else None

    async def store(self, data: bytes, content_type: str | None = None) -> str:
        """Store `data` as a new file (durable before this returns); returns its storage id."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ArgumentError(f"storage.store: data must be bytes, got {type(data).__name__}")
        if content_type is not None and not isinstance(content_type, str):
            raise ArgumentError(f"storage.store: content_type must be a string, got {content_type!r}")
        service = _service(self._service)
        info = service.blobs.put_bytes(bytes(data))  # on this action's own thread: blocking is fine here
        return await self._on_server(service.commit_new(info, content_type))

    async def get(self, storage_id: str) -> bytes | None:
        """The file's bytes, or None if no file has this id."""
        doc = await self._document(check_storage_id(storage_id, "storage.get"))
        if doc is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(None, _service(self._service).read_bytes, doc)

    async def delete(self, storage_id: str) -> None:
        """Delete the file (commits on its own)."""
        service = _service(self._service)
        await self._on_server(service.delete(check_storage_id(storage_id, "storage.delete")))
