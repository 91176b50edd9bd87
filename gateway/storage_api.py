"""File storage over HTTP: upload URLs and file URLs on the main API port.

* ``POST /api/storage/upload?token=T`` — the body is the file (any bytes; its
  ``Content-Type`` is recorded). It is streamed to the blob store, fsynced, and
  its `_storage` document committed before the answer ``{"storageId": id}``
  (see `engine.storage`). Refusals: no or malformed token 400, a token not
  signed by this deployment 403, an expired one 410, one already used 409, a
  body over ``ServerConfig.max_upload_bytes`` 413 (refused from its
  ``Content-Length`` before reading, or when the stream passes the limit), a
  body that does not arrive within ``upload_timeout`` (600 s) 408. A client that
  disconnects mid-upload leaves nothing stored; its URL stays usable.
* ``GET|HEAD /api/storage/{id}`` — the file, with ``Content-Type``,
  ``Content-Length``, ``ETag`` (its SHA-256), ``Accept-Ranges``; single
  ``Range`` requests get 206 (or 416), ``If-None-Match`` a 304. An id that is
  not a stored file's is a 404 (a malformed one, or a path such as
  ``../admin_key``, never reaches the disk: ids are checked before any lookup).

Browser pages on other origins may upload (CORS as for the function API).
Blobs live on the committer: a replica answers both routes with a 307
redirect to the committer (``--committer`` URL), method and body kept.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import TYPE_CHECKING, AsyncIterator, BinaryIO

import orjson
from aiohttp import web

from engine.errors import EngineError
from engine.storage import DOWNLOAD_PREFIX, UPLOAD_PATH, FileStorage, StorageError
from gateway.config import NODE_KEY
from gateway.cors import ALLOW_HEADERS, CorsPolicy
from gateway.http_api import BodyTimeout, one_line
from storage import BLOBS_DIR, BlobMissing, BlobStore, LocalBlobStore

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger("tape.storage")

SEND_CHUNK = 1 << 20  # bytes per worker read when the loop has no sendfile (uvloop): fewer hops, flat memory
SMALL_FILE = 256 << 10  # served from one read in a worker thread; larger files are streamed
MAX_CONTENT_TYPE = 255
TOKEN_SECRET_LABEL = b"tape file storage upload tokens v1"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/json",
                        body=orjson.dumps({"code": code, "message": message}))


def public_url(node: "Node") -> str:
    """The base URL file and upload URLs start with: ``--public-url``, else this node's host and port."""
    config = node.config
    if config.public_url:
        return config.public_url.rstrip("/")
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(config.host, config.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{config.port}"


def attach_storage(node: "Node") -> FileStorage:
    """Give the node's runtime its file storage (blobs in DATA_DIR/blobs; writes on the committer only)."""
    blobs = LocalBlobStore(node.config.data_dir / BLOBS_DIR)
    committer = node.runtime.committer if node.config.role == "committer" else None
    if committer is not None:
        removed = blobs.clear_temporary()
        if removed:
            log.warning("removed %d upload(s) a stop interrupted before they were stored", removed)
    secret = hmac.new(node.admin.value.encode(), TOKEN_SECRET_LABEL, hashlib.sha256).digest()
    service = FileStorage(blobs, committer, secret, public_url(node), max_upload_bytes=node.config.max_upload_bytes,
                          reader=node.runtime.projection)
    node.runtime.storage = service
    return service


def _storage(request: web.Request) -> FileStorage:
    node: Node = request.app[NODE_KEY]
    service = node.runtime.storage if node.runtime is not None else None
    if service is None:
        raise StorageError("file storage is not running on this node", 503, "Unavailable")
    return service


def _on_committer(request: web.Request) -> web.Response | None:
    """On a replica, a redirect (307: method and body kept) to the same URL on the committer, which holds the blobs."""
    config = request.app[NODE_KEY].config
    if config.role != "replica" or not config.committer_url:
        return None
    return web.Response(status=307, headers={"Location": config.committer_url.rstrip("/") + request.path_qs})


def _cors(request: web.Request) -> CorsPolicy:
    config = request.app[NODE_KEY].config
    return CorsPolicy(config.cors_origins, config.cors_max_age)


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


async def upload(request: web.Request) -> web.StreamResponse:
    """``POST /api/storage/upload?token=T`` (see the module docstring)."""
    response = await _upload(request)
    policy = _cors(request)
    if policy.enabled:
        policy.decorate(response, request.headers.get("Origin"))
    return response


async def _upload(request: web.Request) -> web.Response:
    redirect = _on_committer(request)
    if redirect is not None:
        return redirect
    try:
        service = _storage(request)
        limit = service.max_upload_bytes
        if request.content_length is not None and request.content_length > limit:
            response = _error(413, "PayloadTooLarge",
                              f"the file is {request.content_length} bytes, over the {limit} byte limit")
            response.force_close()  # the unread body must not be taken for the next request
            return response
        content_type = request.headers.get("Content-Type") or None
        if content_type is not None and (len(content_type) > MAX_CONTENT_TYPE or not content_type.isprintable()):
            return _error(400, "InvalidContentType", f"Content-Type must be printable and at most "
                                                     f"{MAX_CONTENT_TYPE} characters")
        storage_id = await service.receive(request.query.get("token"), _body(request), content_type)
    except StorageError as exc:
        response = _error(exc.status, exc.code, str(exc))
        if exc.status == 413:
            response.force_close()
        return response
    except BodyTimeout as exc:
        response = _error(408, "RequestTimeout", str(exc))
        response.force_close()
        return response
    except (ConnectionError, web.RequestPayloadError, asyncio.IncompleteReadError) as exc:
        log.info("an upload was interrupted (nothing stored): %s", one_line(exc))
        response = _error(400, "UploadInterrupted", f"the upload was interrupted: {one_line(exc)}")
        response.force_close()
        return response
    except EngineError as exc:  # the committer refused the commit (stopping, or its log failed): nothing stored
        log.warning("an upload's commit failed (its blob is an orphan): %s", exc)
        return _error(503, "Unavailable", f"the file could not be committed, retry: {exc}")
    except OSError as exc:
        log.error("storing an upload failed: %s", exc)
        return _error(507 if exc.errno == 28 else 500, "StorageFailed", f"the file could not be stored: "
                      f"{exc.strerror or exc}")
    return web.Response(content_type="application/json", body=orjson.dumps({"storageId": storage_id}))


async def upload_preflight(request: web.Request) -> web.Response:
    """CORS preflight of an upload from another origin's page."""
    policy = _cors(request)
    if not policy.enabled:
        return web.Response(status=405)
    response = policy.preflight(request)
    if response.status == 204:
        response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
    return response


def _byte_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """(start, end) of the requested bytes (all when no Range); None when unsatisfiable."""
    rng = request.http_range  # raises ValueError on a malformed header
    start, stop = rng.start, rng.stop
    if start is None:
        return 0, size
    if start < 0:  # a suffix ("bytes=-N"): the last N bytes
        return (max(0, size + start), size) if size > 0 else None
    end = size if stop is None else min(stop, size)
    if start >= size or start >= end:
        return None
    return start, end


async def download(request: web.Request) -> web.StreamResponse:
    """``GET|HEAD /api/storage/{id}`` (see the module docstring)."""
    storage_id = request.match_info["storage_id"]
    redirect = _on_committer(request)
    if redirect is not None:
        return redirect
    try:
        service = _storage(request)
    except StorageError as exc:
        return _error(exc.status, exc.code, str(exc))
    node: Node = request.app[NODE_KEY]
    doc = service.document(node.runtime.projection, storage_id)
    if doc is None:
        return _error(404, "NotFound", f"no stored file has id {storage_id!r}")
    try:
        key = service.blob_key(doc)
    except EngineError as exc:
        log.error("%s (run tape doctor)", exc)
        return _error(500, "BlobMissing", f"stored file {storage_id} has no valid blob key")
    etag = f'"{key}"'
    base_headers = {"ETag": etag, "Cache-Control": "private, max-age=2592000, immutable",
                    "X-Content-Type-Options": "nosniff"}
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        tags = [t.strip() for t in if_none_match.split(",")]
        if "*" in tags or etag in tags or f"W/{etag}" in tags:
            return web.Response(status=304, headers=base_headers)
    try:
        fobj, size, whole = await asyncio.get_running_loop().run_in_executor(None, _open_blob, service.blobs, key)
    except BlobMissing:
        log.error("stored file %s: its blob %s is missing (run tape doctor)", storage_id, key)
        return _error(500, "BlobMissing", f"the bytes of stored file {storage_id} are missing on this node")
    try:
        try:
            span = _byte_range(request, size)
        except ValueError:
            span = None
        if span is None:
            return web.Response(status=416, headers={**base_headers, "Content-Range": f"bytes */{size}"})
        start, end = span
        partial = end - start != size
        response = web.StreamResponse(status=206 if partial else 200, headers={
            **base_headers, "Accept-Ranges": "bytes", "Content-Type": doc.get("contentType") or
            "application/octet-stream"})
        response.content_length = end - start
        if partial:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        await response.prepare(request)
        if request.method != "HEAD" and end > start:
            if whole is not None:
                await response.write(whole[start:end])
            else:
                assert fobj is not None
                await _send(request, response, fobj, start, end - start)
        await response.write_eof()
        return response
    finally:
        if fobj is not None:
            fobj.close()


def _open_blob(blobs: BlobStore, key: str) -> tuple[BinaryIO | None, int, bytes | None]:
    """(open file, size, None) of a blob, or (None, size, its bytes) when it is small: one worker call."""
    fobj = blobs.open(key)
    try:
        size = blobs.size(key) or 0
        if size > SMALL_FILE:
            return fobj, size, None
        whole = fobj.read()
    except BaseException:
        fobj.close()
        raise
    fobj.close()
    return None, len(whole), whole


def _read_at(fobj: BinaryIO, offset: int, count: int) -> bytes:
    fobj.seek(offset)
    return fobj.read(count)


async def _send(request: web.Request, response: web.StreamResponse, fobj: BinaryIO, offset: int, count: int) -> None:
    """Write `count` bytes of `fobj` from `offset`: sendfile where the loop has it, else chunks (flat memory)."""
    loop = asyncio.get_running_loop()
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the client went away")
    try:
        await loop.sendfile(transport, fobj, offset, count)
        return
    except NotImplementedError:
        pass
    while count > 0:
        chunk = await loop.run_in_executor(None, _read_at, fobj, offset, min(SEND_CHUNK, count))
        if not chunk:
            raise ConnectionResetError("the stored file is shorter than its size")
        await response.write(chunk)
        offset += len(chunk)
        count -= len(chunk)


def add_routes(app: web.Application) -> None:
    """Register the storage routes (called by `gateway.server.build_app`)."""
    app.router.add_post(UPLOAD_PATH, upload)
    app.router.add_route("OPTIONS", UPLOAD_PATH, upload_preflight)
    app.router.add_get(DOWNLOAD_PREFIX + "{storage_id}", download)  # (GET also answers HEAD)


__all__ = ["add_routes", "attach_storage", "public_url"]
