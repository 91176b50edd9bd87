"""`tape restore`: point-in-time restore of a deployment (see `history.restore` for the semantics).

    tape restore --from DATA_DIR --to TIME --data NEW_DIR     # a new data directory as of TIME
    tape restore --from kafka://host:9092/topic --to TIME --data NEW_DIR
    tape restore --from DATA_DIR --to TIME --in-place [--yes] # rewind a stopped deployment

TIME: an ISO-8601 time (no zone = local time), a commit ts in ns, ts:N,
offset:N (the state after log record N) or end. Exactly the transactions
committed at or before TIME are kept. `--in-place` saves the discarded tail to
DATA_DIR/discarded-*.avro first (read it with `tape stream --log FILE`).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.prompt import Confirm

from history.errors import RestoreError
from history.points import format_ns, parse_point
from history.progress import Reporter, Task
from history.restore import DiscardPlan, RestoreReport, restore_in_place, restore_to_dir
from log.errors import LogError
from ops.errors import CliError
from ops.help import HelpFormatter
from projections.errors import ProjectionError


class RichTask(Task):
    """One rich progress bar."""

    def __init__(self, progress: Progress, description: str, total: int | None) -> None:
        self._progress = progress
        self._id = progress.add_task(description, total=total)

    def update(self, completed: int) -> None:
        self._progress.update(self._id, completed=completed)

    def finish(self) -> None:
        task = self._progress.tasks[self._id] if self._id < len(self._progress.tasks) else None
        if task is not None and task.total is not None:
            self._progress.update(self._id, completed=task.total)


class RichReporter(Reporter):
    """Progress bars on stderr (so stdout stays clean for --json)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<28}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False)

    def task(self, description: str, total: int | None) -> Task:
        """A new progress bar."""
        return RichTask(self.progress, description, total)

    def note(self, text: str) -> None:
        """Print a line above the progress bars."""
        self.progress.console.print(text)

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


RESTORE_HELP = """\
Make a data directory holding exactly the transactions committed at or before TIME.

  tape restore --from DATA_DIR --to TIME --data NEW_DIR     # a new data directory as of TIME
  tape restore --from kafka://host:9092/topic --to TIME --data NEW_DIR
  tape restore --from DATA_DIR --to TIME --in-place [--yes] # rewind a stopped deployment

TIME: an ISO-8601 time (no zone = local time), a commit timestamp in ns, ts:N,
offset:N (the state after log record N) or end. --in-place first saves the
discarded transactions to DATA_DIR/discarded-*.avro (read them with
`tape stream --log FILE`).
"""


def register(subparsers: Any) -> None:
    """Add the `restore` sub-command (called by ops.cli)."""
    p = subparsers.add_parser("restore", help="point-in-time restore: a data directory as of a past time",
                              description=RESTORE_HELP, formatter_class=HelpFormatter)
    p.add_argument("--from", dest="source", required=True,
                   help="a data directory, a log directory, file://PATH or kafka://host:port/topic")
    p.add_argument("--to", dest="time", required=True,
                   help="ISO-8601 time, commit ts in ns, ts:N, offset:N or end")
    p.add_argument("--data", help="the new data directory to create (must not exist or be empty)")
    p.add_argument("--in-place", action="store_true", help="rewind the (stopped) data directory given with --from")
    p.add_argument("--no-checkpoints", action="store_true", help="replay the whole log instead of starting from "
                   "the nearest checkpoint")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before discarding transactions")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    p.set_defaults(func=cmd_restore)


def _summary(report: RestoreReport) -> list[str]:
    b = report.projection
    when = format_ns(report.ts) if report.ts else "the beginning (empty)"
    lines = [
        f"[bold green]Restored[/] {report.destination} as of {report.target}: "
        f"{report.records} transaction(s), offsets 0..{report.upto}, last commit {when}",
    ]
    if b.base_offset >= 0:
        lines.append(f"  projection: {b.base} (offset {b.base_offset}) + replayed {b.replayed} record(s) "
                     f"in {b.replay_seconds:.2f}s")
    else:
        rate = f" ({b.replay_rate:,.0f} records/s)" if b.replayed and b.replay_seconds > 0 else ""
        lines.append(f"  projection: full replay of {b.replayed} record(s) in {b.replay_seconds:.2f}s{rate}")
    if report.in_place:
        if report.discarded:
            lines.append(f"  discarded {report.discarded} transaction(s), saved to {report.archive}")
            lines.append(f"  (read them with: tape stream --log {report.archive})")
        else:
            lines.append("  nothing was discarded")
    else:
        lines.append(f"  log: copied {report.records} record(s) in {report.log_seconds:.2f}s")
    lines.append(f"  done in {report.seconds:.2f}s")
    return lines


def cmd_restore(args: argparse.Namespace) -> None:
    """Run `tape restore` (see the module docstring)."""
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        point = parse_point(args.time, bare="ts")
    except RestoreError as exc:
        raise CliError(str(exc)) from None
    if args.in_place and args.data:
        raise CliError("use either --data NEW_DIR (a new directory) or --in-place (rewind --from), not both")
    if not args.in_place and not args.data:
        raise CliError("say where to restore to: --data NEW_DIR, or --in-place to rewind the source")

    def confirm(plan: DiscardPlan) -> bool:
        err.print(plan.describe())
        if plan.discarded <= 0 or args.yes:
            return True
        if not sys.stdin.isatty():
            raise RestoreError(f"refusing to discard {plan.discarded} transaction(s) without confirmation: "
                               "run in a terminal or pass --yes")
        reporter.progress.stop()
        try:
            return Confirm.ask(f"Discard {plan.discarded} transaction(s)? They are saved to a file first",
                               console=err, default=False)
        finally:
            reporter.progress.start()

    reporter = RichReporter(err)
    try:
        with reporter:
            if args.in_place:
                report = asyncio.run(restore_in_place(args.source, point, confirm, reporter))
            else:
                report = asyncio.run(restore_to_dir(args.source, point, args.data, reporter,
                                                    use_checkpoints=not args.no_checkpoints))
    except (RestoreError, LogError, ProjectionError, OSError) as exc:
        raise CliError(str(exc)) from None
    if report is None:
        err.print("Aborted: nothing was changed.")
        return
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_json()).decode() + "\n")
        return
    for line in _summary(report):
        out.print(line)
