"""Shared fixtures: test apps, in-process runtimes and real `tape dev` servers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest

from engine.app import App
from engine.runtime import Runtime
from log import codec

APPS = Path(__file__).parent / "apps"
ROOT = Path(__file__).parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long soak tests too")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "codec_fallback: the test feeds the log codec records its fast encoder declines on purpose")


@pytest.fixture(autouse=True)
def _no_codec_fallback(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test in which the log codec's fast encoder declined a record the generic one then encoded.

    Every record Tape builds is of the plain types the fast path handles; a
    test that feeds odd ones on purpose is marked ``codec_fallback``.
    """
    before = codec.fallback_count()
    yield
    if request.node.get_closest_marker("codec_fallback") is None:
        fell_back = codec.fallback_count() - before
        assert not fell_back, f"the log codec's fast encoder fell back to fastavro for {fell_back} valid record(s)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="soak test: run with --soak"))


RuntimeFactory = Callable[..., Awaitable[Runtime]]


@pytest.fixture
async def make_runtime(tmp_path: Path) -> AsyncIterator[RuntimeFactory]:
    """Build started runtimes on a FileLog + Projection in tmp_path; all are stopped afterwards."""
    from log.file_log import FileLog
    from projections.store import Projection

    made: list[tuple[Runtime, object, object]] = []

    async def factory(app_name: str = "kitchen", data: Path | None = None, limits: Any = None) -> Runtime:
        app = App.load(APPS / app_name)
        data = data or tmp_path / f"data{len(made)}"
        log = FileLog(data / "log")
        await log.open()
        projection = Projection(data / "projection", app.schema.index_catalog())
        runtime = Runtime(app, log, projection) if limits is None else Runtime(app, log, projection, limits)
        await runtime.start()
        made.append((runtime, log, projection))
        return runtime

    yield factory
    for runtime, log, projection in made:
        await runtime.stop()
        projection.close()  # type: ignore[attr-defined]
        await log.close()  # type: ignore[attr-defined]


@pytest.fixture
def server_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start real `tape` servers (subprocesses); all are stopped at the end of the test."""
    from tests.server_process import ServerProcess
    started: list[ServerProcess] = []

    def start(app: str | Path = "kitchen", data: Path | None = None, **kw) -> ServerProcess:  # type: ignore[no-untyped-def]
        app_dir = APPS / app if isinstance(app, str) else app
        server = ServerProcess(app_dir, data or tmp_path / f"data{len(started)}", **kw).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
