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
from rich.markup import escape

from engine.app import App
from engine.errors import AppLoadError, EngineError
from engine.limits import DEFAULT_LIMITS, cache_budgets
from gateway.config import ServerConfig
from gateway.dashboard_api import DASHBOARD_PATH
from gateway.node import Node
from gateway.replica import (ADMIN_KEY_ENV, ADMIN_KEY_FILE_ENV, AdminKeyFileError, admin_key_from_env,
                             read_admin_key_file)
from gateway.server import BadHost, PortInUse, serve
from history.retention import parse_duration
from log.errors import LogError
from ops import bench_cmd, codegen_cmd, doctor_cmd, env_cmd, export_cmd, logs_cmd, restore_cmd, run_cmd, stream_cmd
from ops.errors import CliError
from ops.help import HelpFormatter
from ops.logs import FORMATS as LOG_FORMATS, LEVELS as LOG_LEVELS, configure_logging
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
COMMAND_MODULES = (restore_cmd, stream_cmd, export_cmd, doctor_cmd, bench_cmd, run_cmd, codegen_cmd, env_cmd, logs_cmd)


def _event_loop_policy() -> None:
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _load_app(app_dir: str, command: str = "dev") -> App:
    path = Path(app_dir)
    if path.is_file():
        raise CliError(f"{path} is a file: give the app directory that holds your modules "
                       f"(e.g. tape {command} {path.parent})")
    if not path.is_dir():
        raise CliError(f"app directory {path} does not exist: create it and put your Python modules in it")
    try:
        app = App.load(path)
    except AppLoadError as exc:
        raise CliError(f"could not load the app: {exc}") from None
    if not app.functions and app.http is None:
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


def _check_log_location(log_url: str | None, data: Path) -> None:
    """A FileLog location must be a directory (or not exist yet): a file there is a one-line error."""
    if log_url is not None and "://" in log_url and not log_url.startswith("file://"):
        return  # kafka://... is checked when it is opened
    if log_url is None:
        path, option = data / "log", f"the log directory {data / 'log'}"
    else:
        path, option = Path(log_url.removeprefix("file://")), f"--log {log_url}"
    if path.exists() and not path.is_dir():
        fix = ("move that file away, or give another --data directory" if log_url is None
               else "give a directory path to --log (it is created if missing), not a file")
        raise CliError(f"{option} is a file, but the log is a directory of segment files: {fix}")


def port_number(text: str) -> int:
    """argparse type of --port: a TCP port 1-65535, or 0 for any free port (the one it gets is printed)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number: give 1-65535 (0: any free port)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number: give 1-65535 (0: any free port)")
    return port


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


def _site_port(args: argparse.Namespace) -> int | None:
    """`ServerConfig.site_port` from --site-port (None: the API port + 1); CliError when it cannot be used."""
    for flag, port in (("--port", args.port), ("--site-port", args.site_port)):
        if port is not None and not 0 <= port <= 65535:
            raise CliError(f"{flag} must be a port number in 0..65535, got {port}")
    chosen = args.port + 1 if args.site_port is None else args.site_port
    if chosen > 65535:
        raise CliError(f"--port {args.port} leaves no default site port (port + 1): give --site-port")
    if chosen != 0 and chosen == args.port:
        raise CliError(f"--site-port {chosen} is the API port: HTTP actions need a port of their own")
    if args.max_http_body_bytes <= 0:
        raise CliError(f"--max-http-body-bytes must be positive, got {args.max_http_body_bytes}")
    return args.site_port


DEFAULT_CHECKPOINT_EVERY = 300.0  # seconds, when --retain or a Kafka log (replicas) make checkpoints needed


def _duration(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from None


def _lifecycle_options(args: argparse.Namespace) -> dict[str, object]:
    """ServerConfig fields from --retain, --archive, --checkpoint-every/--checkpoint-interval, --bootstrap-from.

    Checkpoints are on by default (every 5 minutes, or an eighth of a shorter --retain window) when
    --retain is given or the log is on Kafka, where replicas bootstrap from them.
    """
    retain = _duration("--retain", getattr(args, "retain", None))
    if retain is not None and retain <= 0:
        raise CliError("--retain: give a positive duration (omit it to keep everything)")
    every = _duration("--checkpoint-every", getattr(args, "checkpoint_every", None))
    if every is None:
        every = getattr(args, "checkpoint_interval", None)
    if every is None:
        needed = retain is not None or str(getattr(args, "log", None) or "").startswith("kafka://")
        every = 0.0 if not needed else min(DEFAULT_CHECKPOINT_EVERY, retain / 8) if retain else DEFAULT_CHECKPOINT_EVERY
    archive = getattr(args, "archive", None)
    if archive is not None and retain is None:
        raise CliError("--archive only applies with --retain")
    if archive is not None and archive.lower() != "none":
        archive = str(Path(archive).resolve())
    elif archive is not None:
        archive = "none"
    bootstrap = getattr(args, "bootstrap_from", None)
    return {"retain_seconds": retain, "archive": archive, "checkpoint_interval": float(every),
            "segment_bytes": getattr(args, "log_segment_bytes", None),
            "bootstrap_from": Path(bootstrap).resolve() if bootstrap else None}


def cmd_serve(args: argparse.Namespace, *, dev: bool) -> None:
    """Run `tape dev` (reloading on save) or `tape serve`."""
    site_port = _site_port(args)
    app = _load_app(args.app, "dev" if dev else "serve")
    admin_key = _admin_key(args)
    data = Path(args.data) if args.data else Path(args.app) / ".tape"
    _check_data_dir(data)
    _check_log_location(args.log, data)
    config = ServerConfig(app_dir=Path(args.app).resolve(), data_dir=data.resolve(), host=args.host, port=args.port,
                          log_url=args.log, role=getattr(args, "role", "committer"),
                          committer_url=getattr(args, "committer", None), reload=dev,
                          checkpoint_keep=getattr(args, "checkpoint_keep", 3), admin_key=admin_key,
                          **_lifecycle_options(args),  # type: ignore[arg-type]
                          cors_origins=_cors_origins(args.cors_origin),
                          query_at_ts_window=args.query_at_ts_window, header_timeout=args.header_timeout,
                          site_port=site_port, max_http_body_bytes=args.max_http_body_bytes,
                          metrics_port=args.metrics_port,
                          max_upload_bytes=args.max_upload_bytes, public_url=args.public_url,
                          limits=cache_budgets(replace(DEFAULT_LIMITS, max_seconds=args.function_timeout,
                                                       max_action_seconds=args.action_timeout),
                                               int(args.cache_mb * (1 << 20))))
    node = Node(config, app)

    def ready() -> None:
        if node.admin.unshown:  # the first start that succeeded (an earlier one may have failed)
            console.print(f"[bold]Admin key[/] (shown once, stored in {node.admin.path}): {node.admin.value}")
            node.admin.mark_shown()
        else:
            console.print(f"[bold]Admin key[/] in {node.admin.path}")
        console.print(f"[bold green]Tape[/] {config.role} serving [bold]{args.app}[/] at "
                      f"[link]http://{config.host}:{config.port}[/] (data: {config.data_dir}, "
                      f"log offset {node.runtime.projection.applied_offset + 1})")
        console.print(f"Dashboard at [link]http://{config.host}:{config.port}{DASHBOARD_PATH}[/] "
                      "(sign in with the admin key)")
        if config.metrics_port is not None:
            console.print(f"Metrics (Prometheus, no key needed) at http://{config.host}:{config.metrics_port}/metrics")
        if args.log_format == "json":  # the banner above is for people; this line for log collectors
            log.info("serving %s at http://%s:%d", args.app, config.host, config.port,
                     extra={"url": f"http://{config.host}:{config.port}", "port": config.port,
                            "admin_key_file": str(node.admin.path)})
        for fn in sorted(app.functions.values(), key=lambda f: f.path):
            console.print(f"  {fn.kind:<8} {fn.path}{'  (internal)' if fn.internal else ''}")
        if node.site_url is not None:
            routes = app.http.routes if app.http is not None else []
            console.print(f"HTTP actions at [link]{node.site_url}[/] ({len(routes)} route"
                          f"{'' if len(routes) == 1 else 's'} in http.py)")
            for route in routes:
                console.print(f"  {route.method:<8} {escape(route.path or f'{route.prefix}*')}")
        if dev:
            console.print("Watching for changes. Ctrl-C to stop.")

    try:
        asyncio.run(serve(node, ready))
    except (PortInUse, BadHost) as exc:
        raise CliError(str(exc)) from None
    except (LogError, ProjectionError, EngineError) as exc:
        raise CliError(str(exc)) from None
    console.print("Stopped cleanly: every acknowledged mutation is in the log.")


def build_parser() -> argparse.ArgumentParser:
    """The `tape` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="tape", description="Tape: a reactive backend on a commit log.",
                                     epilog="Start with `tape dev APP_DIR`; `tape COMMAND --help` explains each "
                                            "command.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the dev server for an app directory (reloads on save)",
                         formatter_class=HelpFormatter,
                         description="Serve the functions in APP (a directory of Python modules) and reload them "
                                     "when a file changes. Data lives in APP/.tape unless --data says otherwise.")
    dev.add_argument("app", help="app directory holding your Python functions")
    _server_options(dev)
    dev.set_defaults(func=lambda a: cmd_serve(a, dev=True))

    serve = sub.add_parser("serve", help="run a production node (committer or replica)", formatter_class=HelpFormatter,
                           description="Serve the functions in APP without reloading. A committer runs every "
                                       "mutation and appends to the log; a replica follows the log, serves queries "
                                       "and forwards mutations to --committer.")
    serve.add_argument("app", help="app directory holding your Python functions")
    _server_options(serve)
    serve.add_argument("--role", choices=["committer", "replica"], default="committer",
                       help="committer: the one node that runs mutations; replica: serves reads, forwards writes")
    serve.add_argument("--committer", metavar="URL",
                       help="the committer's URL, e.g. http://10.0.0.5:3210 (required for --role replica)")
    serve.add_argument("--admin-key-file", metavar="PATH",
                       help=f"file holding the committer's admin key, for a replica (default: ${ADMIN_KEY_FILE_ENV}, "
                            f"else ${ADMIN_KEY_ENV})")
    serve.add_argument("--admin-key", metavar="KEY",
                       help="the committer's admin key on the command line (visible in ps: prefer --admin-key-file)")
    serve.add_argument("--checkpoint-every", metavar="DURATION",
                       help="take a projection checkpoint this often (e.g. 5m; 0: never). Default: 5m (or an eighth "
                            "of --retain) when --retain is given or the log is on Kafka, else never")
    serve.add_argument("--checkpoint-interval", type=float, default=None, metavar="SECONDS",
                       help="the same in seconds (older spelling)")
    serve.add_argument("--checkpoint-keep", type=int, default=3,
                       help="how many newest checkpoints to keep (with --retain, also one per quarter window)")
    serve.add_argument("--retain", metavar="DURATION",
                       help="keep this much history (e.g. 30d): older log segments covered by a checkpoint are "
                            "archived or deleted (default: keep everything)")
    serve.add_argument("--archive", metavar="DIR|none",
                       help="where --retain moves old segments (default DATA/log-archive; 'none': delete them)")
    serve.add_argument("--log-segment-bytes", type=int, default=None, metavar="BYTES",
                       help="FileLog segment size (default 64 MiB); --retain removes whole segments")
    serve.add_argument("--bootstrap-from", metavar="DIR",
                       help="a new replica copies its first projection from the newest checkpoint in DIR (a shared "
                            "data or checkpoints directory) instead of fetching it from --committer")
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
    p.add_argument("--site-port", type=int, default=None, metavar="PORT",
                   help="port serving the app's HTTP actions, http.py (default: --port + 1, i.e. 3211; 0: off)")
    p.add_argument("--max-http-body-bytes", type=int, default=ServerConfig.max_http_body_bytes, metavar="BYTES",
                   help="largest request body an HTTP action accepts; larger ones get 413 "
                        f"(default {ServerConfig.max_http_body_bytes})")
    p.add_argument("--data", metavar="DIR", help="data directory: log, projection, admin key (default: APP/.tape)")
    p.add_argument("--port", type=port_number, default=ServerConfig.port,
                   help="TCP port to listen on, 1-65535; 0 picks a free one and prints it")
    p.add_argument("--host", default=ServerConfig.host,
                   help="address to listen on: 127.0.0.1 for this machine only, 0.0.0.0 for every interface")
    p.add_argument("--log", metavar="URL", help="the commit log: a directory (default: DATA/log) or "
                                                "kafka://host:port/topic")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="text: readable lines; json: one JSON object per line (ts, level, logger, message, "
                        "request_id/path where known), on stderr")
    p.add_argument("--log-level", choices=LOG_LEVELS,
                   help="the least severe of Tape's log lines shown (default: info for dev, warning for serve)")
    p.add_argument("--metrics-port", type=port_number, metavar="PORT",
                   help="also serve GET /metrics (Prometheus) on this port without the admin key; on --port it "
                        "needs 'Authorization: Bearer <admin key>'")
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
    default_cache_mb = (DEFAULT_LIMITS.document_cache_bytes + DEFAULT_LIMITS.scan_cache_bytes) / (1 << 20)
    p.add_argument("--cache-mb", type=_positive_mb, default=default_cache_mb, metavar="MB",
                   help="memory for the committer's caches of documents and index lookups, in MiB "
                        f"(default {default_cache_mb:g})")


def _positive_mb(text: str) -> float:
    """An argparse type: a positive number of MiB."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MiB, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 MiB, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tape` console script."""
    args = build_parser().parse_args(argv)
    # `tape dev` shows Tape's INFO lines (reloads, functions moved off the loop); -v shows everything.
    tape_level = getattr(args, "log_level", None) or ("info" if args.command == "dev" else None)
    configure_logging(log_format=getattr(args, "log_format", None) or "text",
                      level="debug" if args.verbose else "warning", tape_level="debug" if args.verbose else tape_level)
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
