"""Cron jobs (`crons.py`): schedules, load-time refusals, runs, missed runs and reloads (issue 16)."""
from __future__ import annotations

import asyncio
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from engine.app import App
from engine.crons import CronJobs
from engine.errors import AppLoadError
from tests.conftest import APPS
from tests.engine.test_scheduler import until


def ms(*parts: int) -> float:
    return datetime(*parts, tzinfo=timezone.utc).timestamp() * 1000.0


def test_schedules_evaluated_against_fixed_times() -> None:
    crons = CronJobs()
    crons.cron("five", "*/5 * * * *", "m:f")
    crons.hourly("hourly", {"minute_utc": 17}, "m:f")
    crons.daily("daily", {"hour_utc": 3, "minute_utc": 30}, "m:f")
    crons.weekly("weekly", {"day_of_week": "monday", "hour_utc": 9, "minute_utc": 0}, "m:f")
    crons.monthly("monthly", {"day": 31, "hour_utc": 0, "minute_utc": 0}, "m:f")
    crons.interval("interval", {"minutes": 2}, "m:f")
    at = ms(2026, 2, 3, 10, 12)  # a Tuesday
    specs = crons.specs
    assert specs["five"].next_after(at) == ms(2026, 2, 3, 10, 15)
    assert specs["five"].next_after(ms(2026, 2, 3, 10, 15)) == ms(2026, 2, 3, 10, 20)  # strictly after
    assert specs["hourly"].next_after(at) == ms(2026, 2, 3, 10, 17)
    assert specs["daily"].next_after(at) == ms(2026, 2, 4, 3, 30)
    assert specs["weekly"].next_after(at) == ms(2026, 2, 9, 9, 0)
    assert specs["monthly"].next_after(at) == ms(2026, 3, 31, 0, 0)  # February has no 31st
    assert specs["interval"].next_after(at) == at + 120_000


def _app_with_crons(tmp_path: Path, crons_py: str) -> Path:
    app = tmp_path / "app"
    shutil.copytree(APPS / "crons", app)
    (app / "crons.py").write_text(crons_py)
    return app


@pytest.mark.parametrize("line, message", [
    ('crons.cron("bad", "61 * * * *", "ticks:tick", {"source": "x"})', "bad cron expression"),
    ('crons.interval("x", {"seconds": 1}, "ticks:nope", {"source": "x"})', "unknown function"),
    ('crons.interval("x", {"seconds": 1}, "ticks:ticks", {})', "is a query"),
    ('crons.interval("x", {"seconds": 1}, "ticks:tick", {"source": 1})', "source"),
    ('crons.interval("x", {"days": 1}, "ticks:tick", {"source": "x"})', "interval schedule"),
    ('crons.interval("x", {"seconds": 1}, "ticks:tick", {"source": "x"}); '
     'crons.interval("x", {"seconds": 2}, "ticks:tick", {"source": "x"})', "already used"),
])
def test_bad_crons_are_refused_at_load_with_file_and_line(tmp_path, line, message) -> None:
    app = _app_with_crons(tmp_path, f"from engine import cron_jobs\n\ncrons = cron_jobs()\n{line}\n")
    with pytest.raises(AppLoadError, match=message) as info:
        App.load(app)
    assert f"{app / 'crons.py'}:4" in str(info.value)


async def test_interval_cron_runs_each_second_and_each_run_is_a_job(make_runtime) -> None:
    rt = await make_runtime("crons")
    await until(lambda: len(rt.run_query("ticks:ticks", {}).value) >= 2, 5)
    runs = rt.run_query("ticks:runs", {}).value
    assert all(r["name"] == "ticks:tick" and r["args"] == [{"source": "interval"}] for r in runs)
    assert {r["state"]["kind"] for r in runs} <= {"pending", "success"}
    times = sorted(r["scheduledTime"] for r in runs)
    assert 800 <= times[1] - times[0] <= 2000  # one second apart (plus lateness on a busy machine)


async def test_missed_runs_run_once_at_start_up(make_runtime, tmp_path) -> None:
    data = tmp_path / "crons"
    rt = await make_runtime("crons", data)
    await until(lambda: len(rt.run_query("ticks:ticks", {}).value) >= 1, 5)
    await rt.stop()
    rt.projection.close()
    await rt.log.close()
    await asyncio.sleep(3.2)  # three slots missed
    rt2 = await make_runtime("crons", data)
    before = len(rt2.run_query("ticks:ticks", {}).value)
    started = time.monotonic()
    await until(lambda: len(rt2.run_query("ticks:ticks", {}).value) == before + 1, 3)
    assert time.monotonic() - started < 0.9  # at start-up, not an interval (1 s) later
    await asyncio.sleep(0.3)
    assert len(rt2.run_query("ticks:ticks", {}).value) == before + 1  # once, not once per missed slot


async def test_reloading_crons_py_changes_the_schedule(make_runtime, tmp_path) -> None:
    app_dir = _app_with_crons(tmp_path, 'from engine import cron_jobs\ncrons = cron_jobs()\n')
    rt = await make_runtime(str(app_dir))
    await asyncio.sleep(1.2)
    assert rt.run_query("ticks:ticks", {}).value == []
    (app_dir / "crons.py").write_text('from engine import cron_jobs\ncrons = cron_jobs()\n'
                                      'crons.interval("fast", {"seconds": 0.2}, "ticks:tick", {"source": "new"})\n')
    rt.install_app(rt.app.reload())
    await until(lambda: len(rt.run_query("ticks:ticks", {}).value) >= 2, 3)
    assert set(rt.run_query("ticks:ticks", {}).value) == {"new"}
