"""The storage benchmark's peer: a bare aiohttp file server with the same durability as Tape's blob store.

    python -m bench.storage_peer --port N --dir DIR

``POST /upload`` streams the body to a temporary file, fsyncs it, renames it
into DIR and fsyncs DIR, then answers ``{"id"}``; ``GET /files/{id}`` serves
it with `web.FileResponse`. No hashing, no metadata, no log: the floor of an
fsynced upload and a file download in aiohttp on this machine.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from pathlib import Path

from aiohttp import web

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


def make_app(directory: Path) -> web.Application:
    directory.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY)

    def finish(fd: int, tmp: Path, final: Path) -> None:
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, final)
        os.fsync(dir_fd)

    async def upload(request: web.Request) -> web.Response:
        name = secrets.token_hex(16)
        tmp = directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            async for chunk in request.content.iter_any():
                os.write(fd, chunk)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        await asyncio.get_running_loop().run_in_executor(None, finish, fd, tmp, directory / name)
        return web.json_response({"id": name})

    async def download(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(directory / request.match_info["name"],
                                headers={"Content-Type": "application/octet-stream"})

    async def version(_: web.Request) -> web.Response:
        return web.Response(text="storage peer")

    app = web.Application()
    app.router.add_post("/upload", upload)
    app.router.add_get("/files/{name}", download)
    app.router.add_get("/version", version)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # as `tape serve` runs
    web.run_app(make_app(Path(args.dir)), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
