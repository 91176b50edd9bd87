"""The `tape` command line: `dev` and `serve` here, the other sub-commands in the ops.*_cmd modules.

Data at rest is owner-only: every command that creates or reads data
(`DATA_COMMANDS`) runs with umask 077 (RocksDB, the log and checkpoints
create their files 0644 & ~umask = 0600, directories 0700), and a data
directory it is given that other users could read is made owner-only at
start, with a WARNING (`secure_data_dir`). The committer's admin
key, which a replica needs, comes from ``--admin-key-file PATH``,
``TAPE_ADMIN_KEY_FILE`` or ``TAPE_ADMIN_KEY``; ``--admin-key KEY`` still works
but warns, as every local user sees it in ``ps``.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import stat
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from engine.app import App
from engine.errors import AppLoadError, EngineError
from engine.limits import DEFAULT_LIMITS
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.replica import (ADMIN_KEY_ENV, ADMIN_KEY_FILE_ENV, AdminKeyFileError, admin_key_from_env,
                             read_admin_key_file)
from gateway.server import PortInUse, serve
from log.errors import LogError
from ops import bench_cmd, doctor_cmd, export_cmd, restore_cmd, run_cmd, stream_cmd
from ops.errors import CliError
from projections.errors import ProjectionError

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency everywhere but Windows
    uvloop = None

console = Console(stderr=False, highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
log = logging.getLogger("tape.cli")

PRIVATE_UMASK = 0o077  # files 0600, directories 0700
DATA_COMMANDS = frozenset({"dev", "serve", "restore", "import", "export", "doctor", "stream"})  # run with it

# Each module adds its sub-commands with `register(subparsers)`.
COMMAND_MODULES = (restore_cmd, stream_cmd, export_cmd, doctor_cmd, bench_cmd, run_cmd)


def _event_loop_policy() -> None:
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _load_app(app_dir: str) -> App:
    path = Path(app_dir)
    if not path.is_dir():
        raise CliError(f"app directory {path} does not exist")
    try:
        app = App.load(path)
    except AppLoadError as exc:
        raise CliError(f"could not load the app: {exc}") from None
    if not app.functions:
        raise CliError(f"{path} has no functions: add a module with @query / @mutation / @action functions")
    return app


def _check_data_dir(data: Path) -> None:
    try:
        data.mkdir(parents=True, exist_ok=True)
        probe = data / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"data directory {data} is not usable: {exc.strerror or exc}") from None


def make_private(path: Path) -> tuple[int, int]:
    """Make `path` and everything under it owner-only: directories 0700, files without group/other bits.

    Returns (the mode `path` had, how many entries were open to other users).
    Symbolic links are not followed. Raises OSError if something cannot be changed.
    """
    before = stat.S_IMODE(path.stat().st_mode)
    loose = 0

    def tighten(entry: Path) -> None:
        nonlocal loose
        info = entry.lstat()
        if stat.S_ISLNK(info.st_mode):
            return
        mode = stat.S_IMODE(info.st_mode)
        wanted = 0o700 if stat.S_ISDIR(info.st_mode) else mode & ~PRIVATE_UMASK
        if mode != wanted:
            loose += bool(mode & PRIVATE_UMASK)
            os.chmod(entry, wanted)

    tighten(path)
    for root, dirs, files in os.walk(path):  # does not descend into symbolic links
        for name in (*dirs, *files):
            tighten(Path(root) / name)
    return before, loose


def secure_data_dir(path: Path, *, quiet: bool = False) -> None:
    """Make an existing data directory owner-only; a WARNING says so if other users could read it."""
    if not path.is_dir():
        return  # created later, under PRIVATE_UMASK
    try:
        before, loose = make_private(path)
    except OSError as exc:
        log.warning("could not make the data directory %s owner-only: %s", path, exc.strerror or exc)
        return
    if loose and not quiet:
        log.warning("the data directory %s was readable by other users (mode %04o, %d entr%s open to them): "
                    "made it owner-only (directories 0700, files 0600)", path, before, loose,
                    "y" if loose == 1 else "ies")


def _data_dirs(args: argparse.Namespace) -> list[Path]:
    """The data directories a command creates, changes or reads (they are made owner-only)."""
    command = args.command
    if command in ("dev", "serve"):
        return [Path(args.data) if args.data else Path(args.app) / ".tape"]
    paths = [getattr(args, "data", None)]
    if command == "restore" and args.in_place:
        paths.append(args.source)
    return [Path(p) for p in paths if p and "://" not in p]


def _admin_key(args: argparse.Namespace) -> str | None:
    """The committer's admin key for a replica: --admin-key-file, --admin-key, $TAPE_ADMIN_KEY_FILE, $TAPE_ADMIN_KEY."""
    key, path = getattr(args, "admin_key", None), getattr(args, "admin_key_file", None)
    if key and path:
        raise CliError("give the admin key once: --admin-key-file PATH or --admin-key KEY, not both")
    if key:
        log.warning("--admin-key shows the key to every local user (ps, /proc): use --admin-key-file PATH, "
                    "%s or %s instead", ADMIN_KEY_FILE_ENV, ADMIN_KEY_ENV)
        return str(key)
    try:
        return read_admin_key_file(path) if path else admin_key_from_env()
    except AdminKeyFileError as exc:
        raise CliError(str(exc)) from None


def _cors_origins(given: list[str] | None) -> tuple[str, ...]:
    """`ServerConfig.cors_origins` from --cors-origin flags (none given: any origin; "none": CORS off)."""
    if not given:
        return ("*",)
    return tuple(o for o in given if o.lower() != "none")


def cmd_serve(args: argparse.Namespace, *, dev: bool) -> None:
    """Run `tape dev` (reloading on save) or `tape serve`."""
    app = _load_app(args.app)
    admin_key = _admin_key(args)
    data = Path(args.data) if args.data else Path(args.app) / ".tape"
    _check_data_dir(data)
    config = ServerConfig(app_dir=Path(args.app).resolve(), data_dir=data.resolve(), host=args.host, port=args.port,
                          log_url=args.log, role=getattr(args, "role", "committer"),
                          committer_url=getattr(args, "committer", None), reload=dev,
                          checkpoint_interval=getattr(args, "checkpoint_interval", 0.0) or 0.0,
                          checkpoint_keep=getattr(args, "checkpoint_keep", 3), admin_key=admin_key,
                          cors_origins=_cors_origins(args.cors_origin),
                          query_at_ts_window=args.query_at_ts_window, header_timeout=args.header_timeout,
                          max_upload_bytes=args.max_upload_bytes, public_url=args.public_url,
                          limits=replace(DEFAULT_LIMITS, max_seconds=args.function_timeout,
                                         max_action_seconds=args.action_timeout))
    node = Node(config, app)

    def ready() -> None:
        if node.admin.created:
            console.print(f"[bold]Admin key[/] (shown once, stored in {node.admin.path}): {node.admin.value}")
        console.print(f"[bold green]Tape[/] {config.role} serving [bold]{args.app}[/] at "
                      f"[link]http://{config.host}:{config.port}[/] (data: {config.data_dir}, "
                      f"log offset {node.runtime.projection.applied_offset + 1})")
        for fn in sorted(app.functions.values(), key=lambda f: f.path):
            console.print(f"  {fn.kind:<8} {fn.path}{'  (internal)' if fn.internal else ''}")
        if dev:
            console.print("Watching for changes. Ctrl-C to stop.")

    try:
        asyncio.run(serve(node, ready))
    except PortInUse as exc:
        raise CliError(f"{exc} — is another server running? Use --port to pick another port.") from None
    except (LogError, ProjectionError, EngineError) as exc:
        raise CliError(str(exc)) from None
    console.print("Stopped cleanly: every acknowledged mutation is in the log.")


def build_parser() -> argparse.ArgumentParser:
    """The `tape` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="tape", description="Tape: a reactive backend on a commit log.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the dev server for an app directory (reloads on save)")
    dev.add_argument("app", help="app directory holding your Python functions")
    _server_options(dev)
    dev.set_defaults(func=lambda a: cmd_serve(a, dev=True))

    serve = sub.add_parser("serve", help="run a production node (committer or replica)")
    serve.add_argument("app", help="app directory")
    _server_options(serve)
    serve.add_argument("--role", choices=["committer", "replica"], default="committer")
    serve.add_argument("--committer", help="committer URL a replica forwards mutations to")
    serve.add_argument("--admin-key-file", metavar="PATH",
                       help=f"file holding the committer's admin key, for a replica (default: ${ADMIN_KEY_FILE_ENV}, "
                            f"else ${ADMIN_KEY_ENV})")
    serve.add_argument("--admin-key", metavar="KEY",
                       help="the committer's admin key on the command line (visible in ps: prefer --admin-key-file)")
    serve.add_argument("--checkpoint-interval", type=float, default=0.0, help="seconds between projection checkpoints")
    serve.add_argument("--checkpoint-keep", type=int, default=3, help="how many checkpoints to keep")
    serve.set_defaults(func=lambda a: cmd_serve(a, dev=False))

    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _positive_int(text: str) -> int:
    """An argparse type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of bytes, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above zero, got {value}")
    return value


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="data directory (default: APP/.tape)")
    p.add_argument("--port", type=int, default=3210)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--log", help="log URL: a directory (default DATA/log) or kafka://host:port/topic")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                   help="let browser pages from ORIGIN call the HTTP API (repeatable; default: any origin; "
                        "'none': no CORS)")
    p.add_argument("--query-at-ts-window", type=float, default=ServerConfig.query_at_ts_window, metavar="SECONDS",
                   help="how far back /api/query_at_ts serves without the admin key "
                        f"(default {ServerConfig.query_at_ts_window:g})")
    p.add_argument("--header-timeout", type=float, default=ServerConfig.header_timeout, metavar="SECONDS",
                   help="close a connection that is idle, or has not sent a complete request header, this long "
                        f"(default {ServerConfig.header_timeout:g})")
    p.add_argument("--max-upload-bytes", type=_positive_int, default=ServerConfig.max_upload_bytes, metavar="BYTES",
                   help=f"largest file an upload URL accepts (default {ServerConfig.max_upload_bytes}); 413 past it")
    p.add_argument("--public-url", metavar="URL",
                   help="base URL of the upload and file URLs ctx.storage hands out (default http://HOST:PORT)")
    p.add_argument("--function-timeout", type=float, default=DEFAULT_LIMITS.max_seconds, metavar="SECONDS",
                   help=f"stop a query or mutation after this long (default {DEFAULT_LIMITS.max_seconds:g})")
    p.add_argument("--action-timeout", type=float, default=DEFAULT_LIMITS.max_action_seconds, metavar="SECONDS",
                   help=f"stop an action after this long (default {DEFAULT_LIMITS.max_action_seconds:g})")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tape` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _event_loop_policy()
    private = args.command in DATA_COMMANDS
    umask = os.umask(PRIVATE_UMASK) if private else None  # everything a data command creates is owner-only
    try:
        for path in _data_dirs(args) if private else []:
            secure_data_dir(path)
        args.func(args)
        for path in _data_dirs(args) if args.command in ("restore", "import") else []:
            secure_data_dir(path, quiet=True)  # copied files keep their source's mode
    except CliError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if umask is not None:
            os.umask(umask)
    return 0


__all__ = ["CliError", "build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
