"""The `tape` command line."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

console = Console(stderr=False, highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 1."""


def _event_loop_policy() -> None:
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass


def _load_app(app_dir: str):  # type: ignore[no-untyped-def]
    from engine.app import App
    from engine.errors import AppLoadError
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


def cmd_serve(args: argparse.Namespace, *, dev: bool) -> None:
    from engine.errors import EngineError
    from gateway.config import ServerConfig
    from gateway.node import Node
    from gateway.server import PortInUse, serve
    from log.errors import LogError
    from projections.errors import ProjectionError

    app = _load_app(args.app)
    if getattr(args, "admin_key", None):  # read by gateway.replica when forwarding mutations
        os.environ["TAPE_ADMIN_KEY"] = args.admin_key
    data = Path(args.data) if args.data else Path(args.app) / ".tape"
    _check_data_dir(data)
    config = ServerConfig(app_dir=Path(args.app).resolve(), data_dir=data.resolve(), host=args.host, port=args.port,
                          log_url=args.log, role=getattr(args, "role", "committer"),
                          committer_url=getattr(args, "committer", None), reload=dev,
                          checkpoint_interval=getattr(args, "checkpoint_interval", 0.0) or 0.0,
                          checkpoint_keep=getattr(args, "checkpoint_keep", 3))
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
    serve.add_argument("--admin-key", help="the committer's admin key, for a replica (default: $TAPE_ADMIN_KEY)")
    serve.add_argument("--checkpoint-interval", type=float, default=0.0, help="seconds between projection checkpoints")
    serve.add_argument("--checkpoint-keep", type=int, default=3, help="how many checkpoints to keep")
    serve.set_defaults(func=lambda a: cmd_serve(a, dev=False))

    for extra in _extra_commands():
        extra(sub)
    return parser


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="data directory (default: APP/.tape)")
    p.add_argument("--port", type=int, default=3210)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--log", help="log URL: a directory (default DATA/log) or kafka://host:port/topic")


def _extra_commands() -> list:  # type: ignore[type-arg]
    """Sub-commands contributed by other ops modules (each module exposes `register(subparsers)`)."""
    import importlib
    found = []
    for name in ("ops.restore_cmd", "ops.stream_cmd", "ops.export_cmd", "ops.doctor_cmd", "ops.bench.cli"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: report it
                raise
            continue
        found.append(module.register)
    return found


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tape` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _event_loop_policy()
    try:
        args.func(args)
    except CliError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    # Run the importable module's `main`, so sub-commands that import `ops.cli` share its CliError.
    from ops.cli import main as _main
    sys.exit(_main())
