"""Function logs: captured per call, bounded, in Convex's format, also under concurrency and on threads."""
from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from engine import function_logs as fl
from engine.errors import AppError


def test_lines_are_bounded_like_convex() -> None:
    entry = fl.FunctionLog("m:f", "query")
    for i in range(300):
        entry.add("LOG", f"n {i}")
    assert len(entry.lines) == fl.MAX_LINES
    assert entry.lines[0] == "[LOG] n 0" and entry.lines[-2] == f"[LOG] n {fl.MAX_LINES - 2}"
    assert entry.lines[-1] == "[ERROR] Log overflow (maximum 256). Remaining log lines omitted."

    long = fl.FunctionLog("m:f", "query")
    long.add("LOG", "é" * 40000)  # 80,000 UTF-8 bytes
    (line,) = long.lines
    assert line.endswith(fl.TRUNCATED_SUFFIX) and len(line.encode()) <= fl.MAX_LINE_BYTES

    total = fl.FunctionLog("m:f", "query")
    for _ in range(20):
        total.add("LOG", "y" * 30000)
    assert sum(len(x) for x in total.lines) <= fl.MAX_CALL_BYTES + 200
    assert total.lines[-1] == "[ERROR] Log overflow (maximum 256 KiB). Remaining log lines omitted."


def test_streamed_text_becomes_one_line_per_newline() -> None:
    entry = fl.FunctionLog("m:f", "query")
    entry.write("LOG", "a b")
    entry.write("LOG", " c\nsecond\nthi")
    entry.write("ERROR", "oops\n")
    entry.write("LOG", "rd")
    assert entry.finish() == ["[LOG] a b c", "[LOG] second", "[ERROR] oops", "[LOG] third"]


def test_print_on_threads_goes_to_each_threads_own_call() -> None:
    fl.install()
    results: dict[str, list[str]] = {}
    barrier = threading.Barrier(4)

    def call(tag: str) -> None:
        with fl.capture(f"m:{tag}", "query") as entry:
            assert entry is not None
            barrier.wait()
            for i in range(50):
                print(tag, i)
        results[tag] = entry.lines

    threads = [threading.Thread(target=call, args=(t,)) for t in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for tag in "abcd":
        assert results[tag] == [f"[LOG] {tag} {i}" for i in range(50)]


async def test_query_mutation_and_failure_lines(make_runtime, caplog: pytest.LogCaptureFixture) -> None:
    rt = await make_runtime("fidelity")
    caplog.set_level(logging.INFO, logger="tape.functions")
    result = rt.run_query("logs:hello", {"who": "ada"})
    assert result.log_lines == ["[LOG] hello ada", "[INFO] info for ada", "[DEBUG] debug detail"]
    outcome = await rt.run_mutation("logs:chatty", {"n": 3.0})
    assert outcome.log_lines == ["[LOG] line 0", "[LOG] line 1", "[LOG] line 2"]
    with pytest.raises(AppError) as failed:
        await rt.run_mutation("logs:warn_and_fail", {})
    assert fl.lines_of(failed.value) == ["[LOG] about to fail", "[WARN] careful: 3"]
    # The server log has each line with the function path and the call's request id.
    server = [r.getMessage() for r in caplog.records if r.name == "tape.functions"]
    assert any(m.startswith("query logs:hello [request ") and m.endswith("[LOG] hello ada") for m in server)
    assert any("mutation logs:chatty [request " in m and m.endswith("[LOG] line 2") for m in server)
    # ... and the stream `tape logs` follows has one entry per call, the failure with its error.
    recent = rt.function_logs.recent(10)
    assert [e.path for e in recent] == ["logs:hello", "logs:chatty", "logs:warn_and_fail"]
    assert recent[-1].error == 'Uncaught ConvexError: {"code":"NOPE"}'
    assert recent[0].request_id in " ".join(server)


async def test_concurrent_actions_keep_their_own_lines(make_runtime) -> None:
    rt = await make_runtime("fidelity")
    tags = [f"t{i}" for i in range(6)]
    outcomes = await asyncio.gather(*(rt.call_action("logs:tagged", {"tag": t, "lines": 5.0, "pause": 0.003})
                                      for t in tags))
    for tag, outcome in zip(tags, outcomes):
        assert outcome.value == tag
        assert outcome.log_lines == [f"[LOG] {tag} {i}" for i in range(5)] + [f"[ERROR] {tag} done"]


async def test_concurrent_slow_queries_on_worker_threads(make_runtime) -> None:
    rt = await make_runtime("fidelity")
    results = await asyncio.gather(*(rt.query("logs:slow_tagged", {"tag": t, "spin": 0.05}) for t in "xyz"))
    for tag, result in zip("xyz", results):
        assert result.error is None and result.value == tag
        assert result.log_lines == [f"[LOG] {tag} start", f"[LOG] {tag} end"]
    assert rt.is_slow("logs:slow_tagged")  # they did run off the loop


async def test_output_outside_calls_is_untouched(make_runtime, capsys: pytest.CaptureFixture[str]) -> None:
    await make_runtime("fidelity")
    print("plain server output")
    assert "plain server output" in capsys.readouterr().out


def test_a_log_record_is_captured_once_and_handlers_still_work() -> None:
    fl.install()
    logger = logging.getLogger("thirdparty.lib")
    handler = logging.StreamHandler()  # writes to sys.stderr, which is the capturing proxy now
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with fl.capture("m:f", "query") as entry:
            assert entry is not None
            logger.warning("careful %s", "now")
            logger.debug("below the logger's level")
        assert entry.lines == ["[WARN] careful now"]  # not also the handler's own output as an [ERROR] line
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
