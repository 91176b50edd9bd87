"""Cron jobs: `crons.py` in the app directory, run by the committer as scheduled functions.

```python
# app/crons.py
from engine import cron_jobs
from app_module import cleanup          # or a "module:fn" path

crons = cron_jobs()
crons.interval("clear presence", {"minutes": 1}, "presence:clear", {})
crons.daily("report", {"hour_utc": 17, "minute_utc": 30}, cleanup, {})
crons.cron("every five", "*/5 * * * *", "jobs:tick", {})
```

Schedules are UTC, as in Convex (`hourly`, `daily`, `weekly`, `monthly` take
Convex's argument shapes in snake_case). Expressions are parsed by
`cronsim`. A bad expression, a duplicate name or an unknown function is
refused when the app loads, naming the file and line of the call.

Each run inserts a pending `_scheduled_functions` job (which the scheduler
then runs, so every run is visible there) and updates the cron's state
document in the `_cron_jobs` system table (its last scheduled time), both in
one `_system:cron` record, so a run is never scheduled twice across a crash.
A run missed while the server was down runs once at start-up, not once per
missed slot. Changing `crons.py` under `tape dev` takes effect at the reload.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from cronsim import CronSim, CronSimError

from engine.db import SCHEDULED_FUNCTIONS
from engine.errors import AppLoadError, EngineError
from engine.functions import FunctionDef
from engine.scheduler import job_fields, now_ms
from values import decode_doc

if TYPE_CHECKING:
    from engine.app import App
    from engine.runtime import Runtime

log = logging.getLogger("tape.crons")

CRON_TABLE = "_cron_jobs"
CRON_FUNCTION = "_system:cron"  # `function` of the records that start cron runs
_INTERVAL_UNITS = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0}
_DAYS = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]


@dataclass(frozen=True)
class CronSpec:
    """One cron job: what to run, and when (every `seconds`, or on an `expression`)."""

    name: str
    function: FunctionDef | str
    args: dict[str, Any]
    where: str  # "file:line" of the registering call
    seconds: float | None = None
    expression: str | None = None

    @property
    def path(self) -> str:
        """The function's "module:fn" path."""
        fn = self.function
        return fn.path if isinstance(fn, FunctionDef) else fn

    def describe(self) -> str:
        """The schedule as text (stored with the cron's state: a change restarts its timing)."""
        return f"every {self.seconds:g}s" if self.seconds is not None else f"cron {self.expression}"

    def next_after(self, after_ms: float) -> float:
        """The first run time (ms) strictly after `after_ms`."""
        if self.seconds is not None:
            return after_ms + self.seconds * 1000.0
        assert self.expression is not None
        start = datetime.fromtimestamp(after_ms / 1000.0, timezone.utc)
        return next(CronSim(self.expression, start)).timestamp() * 1000.0


def _caller_location() -> str:
    """"file:line" of the app code that called a `CronJobs` method."""
    frame = sys._getframe(2)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _int_field(schedule: Mapping[str, Any], key: str, low: int, high: int, where: str) -> int:
    value = schedule.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AppLoadError(f"{where}: {key} must be an integer in {low}..{high}, got {value!r}")
    return value


class CronJobs:
    """The registry `cron_jobs()` returns; `crons.py` must assign it to `crons`."""

    def __init__(self) -> None:
        self.specs: dict[str, CronSpec] = {}

    def _add(self, name: str, fn: FunctionDef | str, args: dict[str, Any] | None, where: str,
             seconds: float | None = None, expression: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise AppLoadError(f"{where}: a cron job needs a non-empty name, got {name!r}")
        if name in self.specs:
            raise AppLoadError(f"{where}: cron job name {name!r} is already used at {self.specs[name].where}")
        if not isinstance(fn, (FunctionDef, str)):
            raise AppLoadError(f"{where}: cron job {name!r}: expected a function or a 'module:fn' path, got {fn!r}")
        if args is not None and not isinstance(args, dict):
            raise AppLoadError(f"{where}: cron job {name!r}: args must be a dict, got {type(args).__name__}")
        if expression is not None:
            try:
                CronSim(expression, datetime.now(timezone.utc))
            except CronSimError as exc:
                raise AppLoadError(f"{where}: cron job {name!r}: bad cron expression {expression!r}: {exc}") from None
        self.specs[name] = CronSpec(name, fn, dict(args or {}), where, seconds, expression)

    def interval(self, name: str, schedule: Mapping[str, Any], fn: FunctionDef | str,
                 args: dict[str, Any] | None = None) -> None:
        """Run every `{"seconds" | "minutes" | "hours": n}` (the first run one interval after start)."""
        where = _caller_location()
        if not isinstance(schedule, Mapping) or len(schedule) != 1 or next(iter(schedule)) not in _INTERVAL_UNITS:
            raise AppLoadError(f"{where}: interval schedule must be one of {{'seconds' | 'minutes' | 'hours': n}}, "
                               f"got {schedule!r}")
        unit, amount = next(iter(schedule.items()))
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
            raise AppLoadError(f"{where}: interval {unit} must be a positive number, got {amount!r}")
        self._add(name, fn, args, where, seconds=float(amount) * _INTERVAL_UNITS[unit])

    def hourly(self, name: str, schedule: Mapping[str, Any], fn: FunctionDef | str,
               args: dict[str, Any] | None = None) -> None:
        """Every hour at `{"minute_utc": m}`."""
        where = _caller_location()
        minute = _int_field(schedule, "minute_utc", 0, 59, where)
        self._add(name, fn, args, where, expression=f"{minute} * * * *")

    def daily(self, name: str, schedule: Mapping[str, Any], fn: FunctionDef | str,
              args: dict[str, Any] | None = None) -> None:
        """Every day at `{"hour_utc": h, "minute_utc": m}`."""
        where = _caller_location()
        hour = _int_field(schedule, "hour_utc", 0, 23, where)
        minute = _int_field(schedule, "minute_utc", 0, 59, where)
        self._add(name, fn, args, where, expression=f"{minute} {hour} * * *")

    def weekly(self, name: str, schedule: Mapping[str, Any], fn: FunctionDef | str,
               args: dict[str, Any] | None = None) -> None:
        """Every week at `{"day_of_week": "monday", "hour_utc": h, "minute_utc": m}`."""
        where = _caller_location()
        day = schedule.get("day_of_week")
        if day not in _DAYS:
            raise AppLoadError(f"{where}: day_of_week must be one of {', '.join(_DAYS)}, got {day!r}")
        hour = _int_field(schedule, "hour_utc", 0, 23, where)
        minute = _int_field(schedule, "minute_utc", 0, 59, where)
        self._add(name, fn, args, where, expression=f"{minute} {hour} * * {_DAYS.index(day)}")

    def monthly(self, name: str, schedule: Mapping[str, Any], fn: FunctionDef | str,
                args: dict[str, Any] | None = None) -> None:
        """Every month at `{"day": d, "hour_utc": h, "minute_utc": m}` (months without that day are skipped)."""
        where = _caller_location()
        day = _int_field(schedule, "day", 1, 31, where)
        hour = _int_field(schedule, "hour_utc", 0, 23, where)
        minute = _int_field(schedule, "minute_utc", 0, 59, where)
        self._add(name, fn, args, where, expression=f"{minute} {hour} {day} * *")

    def cron(self, name: str, expression: str, fn: FunctionDef | str, args: dict[str, Any] | None = None) -> None:
        """Run on a cron expression ("*/5 * * * *": minute hour day month weekday, UTC)."""
        where = _caller_location()
        if not isinstance(expression, str):
            raise AppLoadError(f"{where}: cron job {name!r}: the expression must be a string, got {expression!r}")
        self._add(name, fn, args, where, expression=expression)


def cron_jobs() -> CronJobs:
    """A new cron registry: `crons = cron_jobs()` in `crons.py`."""
    return CronJobs()


def load_crons(module: Any, path: Path) -> CronJobs:
    """The `crons` registry of the loaded `crons.py` module."""
    found = getattr(module, "crons", None)
    if not isinstance(found, CronJobs):
        raise AppLoadError(f"{path}: crons.py must define `crons = cron_jobs()`")
    return found


def check_crons(crons: CronJobs, functions: Mapping[str, FunctionDef]) -> None:
    """Refuse crons naming unknown functions, queries, or arguments their function rejects (file:line)."""
    for spec in crons.specs.values():
        fn = spec.function
        if isinstance(fn, FunctionDef):
            target = fn if fn.path and functions.get(fn.path) is fn else None
        else:
            target = functions.get(fn if ":" in fn else f"{fn}:default")
        if target is None:
            raise AppLoadError(f"{spec.where}: cron job {spec.name!r}: unknown function {spec.path or fn!r}")
        if target.kind == "query":
            raise AppLoadError(f"{spec.where}: cron job {spec.name!r}: {target.path} is a query; "
                               "crons run mutations and actions")
        try:
            target.validate_args(spec.args)
        except EngineError as exc:
            raise AppLoadError(f"{spec.where}: cron job {spec.name!r}: {exc}") from None


class CronRunner:
    """Starts due cron runs on the committer (see the module docstring); follows app reloads."""

    def __init__(self, runtime: "Runtime", poll_seconds: float = 1.0) -> None:
        self._runtime = runtime
        self._poll = poll_seconds
        self._app: "App | None" = None
        self._specs: dict[str, CronSpec] = {}
        self._next: dict[str, float] = {}
        self._state_ids: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="tape-crons")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001 - cancelled or failed: it has ended
                pass
            self._task = None

    def _states(self) -> dict[str, dict[str, Any]]:
        """The committed cron state documents, by cron name."""
        states: dict[str, dict[str, Any]] = {}
        for raw in self._runtime.projection.iter_documents(CRON_TABLE):
            doc = decode_doc(raw)
            states[doc["name"]] = doc
        return states

    def _sync(self, app: "App") -> None:
        """Take the crons of `app`: next run times from each cron's stored state."""
        crons: CronJobs | None = getattr(app, "crons", None)
        self._app = app
        self._specs = dict(crons.specs) if crons is not None else {}
        states = self._states()
        self._state_ids = {name: doc["_id"] for name, doc in states.items()}
        now = now_ms()
        self._next = {}
        for name, spec in self._specs.items():
            doc = states.get(name)
            if doc is not None and doc.get("schedule") == spec.describe():
                # Due already (missed while down, however many slots): one run now.
                self._next[name] = spec.next_after(doc["lastScheduledTime"])
            else:
                self._next[name] = spec.next_after(now)

    async def _loop(self) -> None:
        while True:
            try:
                app = self._runtime.app
                if app is not self._app:
                    self._sync(app)
                now = now_ms()
                due = [name for name, at in self._next.items() if at <= now]
                if due:
                    await self._fire(due, now)
                wait = min([self._poll] + [(at - now_ms()) / 1000.0 for at in self._next.values()])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("starting cron runs failed; retrying")
                wait = self._poll
            await asyncio.sleep(max(wait, 0.001))

    async def _fire(self, names: list[str], now: float) -> None:
        """Schedule one run of each due cron and advance its state, in one record."""
        updates: list[tuple[str, str | None, Any]] = []
        advanced: dict[str, float] = {}
        for name in names:
            spec = self._specs[name]
            slot = self._next[name]
            last = slot if spec.next_after(slot) > now else now  # missed slots collapse into this one run
            advanced[name] = last
            fields = job_fields(spec.path if ":" in spec.path else f"{spec.path}:default", spec.args, now)
            updates.append((SCHEDULED_FUNCTIONS, None, lambda _doc, f=fields: f))
            state = {"name": name, "schedule": spec.describe(), "lastScheduledTime": last}
            doc_id = self._state_ids.get(name)
            if doc_id is None:
                updates.append((CRON_TABLE, None, lambda _doc, s=state: s))
            else:
                updates.append((CRON_TABLE, doc_id, lambda doc, s=state: {**(doc or {}), **s}))
        await self._runtime.committer.system_update(CRON_FUNCTION, updates)
        self.runs += len(names)
        for name, last in advanced.items():
            self._next[name] = self._specs[name].next_after(last)
        if any(name not in self._state_ids for name in names):
            self._state_ids = {name: doc["_id"] for name, doc in self._states().items()}
