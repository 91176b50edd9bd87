"""`tape bench`: the benchmarks live in the source tree's bench/ directory, which is not installed.

In a source checkout with an editable install (``pip install -e .``, as
``make dev`` does) the ``ops`` package sits next to bench/ at the repository
root: `register` loads ``bench.cli`` from there and lets it add the
sub-command. From an installation without the source tree, ``tape bench``
still exists but only says, in one line, where to run it from.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

NO_SOURCE = ("tape bench needs a source checkout: the benchmarks live in bench/ at the repository root and are not "
             "installed; clone Tape, `pip install -e .` and run `tape bench` there")


def source_root() -> Path | None:
    """The repository root holding bench/ beside this ops package, or None for an installed copy."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "bench" / "cli.py").is_file():
        return root
    return None


def load_bench_cli(root: Path) -> ModuleType:
    """Import ``bench.cli`` from ``root``/bench (no sys.path change; an already imported `bench` is reused)."""
    if "bench" not in sys.modules:
        package = root / "bench"
        spec = importlib.util.spec_from_file_location("bench", package / "__init__.py",
                                                      submodule_search_locations=[str(package)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["bench"]
            raise
    return importlib.import_module("bench.cli")


def _no_source(args: argparse.Namespace) -> None:
    """The `bench` command of an installation without bench/: a one-line error, exit status 1."""
    raise SystemExit(f"error: {NO_SOURCE}")


def register(subparsers: Any) -> None:
    """Add the `bench` sub-command (called by ops.cli): the real one from bench/, or the one-line error."""
    root = source_root()
    if root is not None:
        load_bench_cli(root).register(subparsers)
        return
    # No option prefix: every word after `bench` (--quick, --help, ...) is taken, so each gets the same answer.
    p = subparsers.add_parser("bench", help="run the benchmarks (needs a source checkout; bench/ is not installed)",
                              description=NO_SOURCE, prefix_chars="+", add_help=False)
    p.add_argument("words", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=_no_source)
