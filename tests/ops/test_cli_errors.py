"""`tape dev` / `tape serve` as a new user meets them: one-line errors that name the fix, ports, help texts."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops import cli
from ops.cli import build_parser
from tests.server_process import ROOT, ServerProcess

APPS = Path(__file__).parent.parent / "apps"
KITCHEN = APPS / "kitchen"


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200"))


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error a failed command printed: exactly one line on stderr, no traceback."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip() and "WARNING" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def tape(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """`tape ARGV` run by `ops.cli.main` in this process (no logging or event-loop set-up): its one-line error."""
    monkeypatch.setattr(cli, "configure_logging", lambda **_: None)
    monkeypatch.setattr(cli, "_event_loop_policy", lambda: None)
    monkeypatch.setenv("COLUMNS", "300")

    def run(*argv: str) -> str:
        status = cli.main(list(argv))
        out, err = capsys.readouterr()
        return one_line_error(subprocess.CompletedProcess(argv, status, out, err))
    return run


def test_a_file_where_the_log_directory_goes(tmp_path: Path, tape: Callable[..., str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "log").write_text("not a log")
    line = tape("dev", str(KITCHEN), "--data", str(data))
    assert f"{data / 'log'} is a file" in line and "move that file away" in line


def test_log_option_pointing_at_a_file(tmp_path: Path, tape: Callable[..., str]) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("")
    line = tape("dev", str(KITCHEN), "--data", str(tmp_path / "d"), "--log", str(log_file))
    assert f"--log {log_file} is a file" in line and "directory path" in line


def test_an_app_path_that_is_a_file(tmp_path: Path, tape: Callable[..., str]) -> None:
    line = tape("dev", str(KITCHEN / "lists.py"), "--data", str(tmp_path / "d"))
    assert "lists.py is a file" in line and f"tape dev {KITCHEN}" in line


def test_a_missing_app_directory(tmp_path: Path, tape: Callable[..., str]) -> None:
    line = tape("dev", str(tmp_path / "nope"))
    assert "does not exist" in line and "create it" in line


def parse(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`tape ARGV` through the real parser, in this process: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(list(argv))
    out, err = capsys.readouterr()
    return int(stopped.value.code or 0), out, err


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "http"])
def test_ports_outside_1_to_65535_are_refused(capsys: pytest.CaptureFixture[str], port: str) -> None:
    status, _, err = parse(capsys, "dev", str(KITCHEN), "--port", port)
    assert status == 2 and "argument --port" in err and "1-65535" in err


def test_ports_0_to_65535_are_accepted() -> None:
    for port in ("0", "1", "3210", "65535"):
        assert build_parser().parse_args(["dev", str(KITCHEN), "--port", port]).port == int(port)


def test_a_bad_host_is_a_host_error(tmp_path: Path, tape: Callable[..., str]) -> None:
    line = tape("dev", str(KITCHEN), "--data", str(tmp_path / "d"), "--host", "256.1.1.1")
    assert "host '256.1.1.1'" in line and "--port" not in line


def test_port_in_use_names_the_option(tmp_path: Path, tape: Callable[..., str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = tape("dev", str(KITCHEN), "--data", str(tmp_path / "d"), "--port", str(port))
    assert f"127.0.0.1:{port}" in line and "--port" in line


def start_dev(app: Path, data: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """`tape dev APP --port 0`: the process and everything it printed up to 'Watching for changes'."""
    proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "dev", str(app), "--data", str(data), "--port", "0",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", COLUMNS="200"))
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 20
    while "Watching for changes" not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    assert "Watching for changes" in seen, seen
    return proc, seen


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=15)
    return rest


def served_port(output: str) -> int:
    match = re.search(r"http://127\.0\.0\.1:(\d+)", output)
    assert match, output
    return int(match.group(1))


def test_port_zero_prints_the_port_it_got_and_the_admin_key_once(tmp_path: Path, tape: Callable[..., str]) -> None:
    data = tmp_path / "data"
    # The first start fails (port in use) after the key was made: the key must not be lost for the user.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        failed = tape("dev", str(KITCHEN), "--data", str(data), "--port", str(taken.getsockname()[1]))
    assert "cannot listen" in failed and "tape_admin_" not in failed
    key = (data / "admin_key").read_text().strip()
    proc, first = start_dev(KITCHEN, data)
    try:
        port = served_port(first)
        assert port != 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5) as r:
            assert r.status == 200
    finally:
        stop(proc)
    assert f"Admin key (shown once, stored in {data / 'admin_key'}): {key}" in first
    proc, second = start_dev(KITCHEN, data, "--metrics-port", "0")
    try:
        metrics_url = re.search(r"Metrics \(Prometheus, no key needed\) at (http://127\.0\.0\.1:\d+/metrics)", second)
        assert metrics_url, second
        with urllib.request.urlopen(metrics_url.group(1), timeout=5) as r:  # no admin key on --metrics-port
            names = {family.name for family in text_string_to_metric_families(r.read().decode())}
        assert {"tape_commits", "tape_sessions", "tape_function_duration_seconds"} <= names
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{served_port(second)}/metrics", timeout=5)
            raise AssertionError("/metrics on --port answered without the admin key")
        except urllib.error.HTTPError as refused:
            assert refused.code == 401
    finally:
        stop(proc)
    assert key not in second and f"Admin key in {data / 'admin_key'}" in second


def test_dev_help_shows_defaults(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    _, text, _ = parse(capsys, "dev", "--help")
    assert "(default: 3210)" in text and "(default: 127.0.0.1)" in text and "0 picks a free one" in text
    _, serve, _ = parse(capsys, "serve", "--help")
    assert "(default: committer)" in serve and "--committer URL" in serve and "(default: 3)" in serve


@pytest.mark.parametrize("command", ["export", "import", "restore", "stream", "run", "env"])
def test_sub_command_help_is_written_for_users(capsys: pytest.CaptureFixture[str], command: str) -> None:
    status, text, _ = parse(capsys, command, "--help")
    assert status == 0
    usage, _, rest = text.partition("\n\n")
    description = rest.split("\noptions:")[0].split("\npositional arguments:")[0]
    assert len(description) > 60, text
    for internal in ("history.", "log.changes", "values.", "DOC_SCHEMA", "IMPORT_BATCH", "``", "`log.", "see `"):
        assert internal not in description, (internal, description)


def test_a_successful_reload_logs_at_info(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(KITCHEN, app)
    proc, _ = start_dev(app, tmp_path / "data")
    try:
        time.sleep(0.6)  # the watcher takes its first look
        (app / "extra.py").write_text("from engine import query\n\n@query(args={})\nasync def hello(ctx):\n"
                                      "    return 'hi'\n")
        time.sleep(1.2)  # it looks every 0.5 s
    finally:
        rest = stop(proc)
    assert re.search(r"INFO tape\.node: reloaded .*app: \d+ functions", rest), rest
    assert "WARNING" not in rest


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    server = ServerProcess(KITCHEN, tmp_path / "data", extra=["--log-format", "json"]).start()
    try:
        req = urllib.request.Request(f"{server.url}/api/mutation", data=orjson.dumps({"path": "lists:crash",
                                                                                       "args": {}}),
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError as answer:
            assert answer.code == 560
        time.sleep(0.3)
    finally:
        server.stop()
    entries = [orjson.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert entries, server.output()
    for entry in entries:
        assert {"ts", "level", "logger", "message"} <= entry.keys()
    serving = next(e for e in entries if e["logger"] == "tape.cli")
    assert serving["level"] == "info" and serving["port"] == server.port
    crash = next(e for e in entries if e["message"].startswith("uncaught exception in lists:crash"))
    assert crash["level"] == "error" and crash["path"] == "lists:crash" and crash["request_id"]
    assert "secret internal detail" in crash["exc"]


def test_metrics_port_in_use_names_its_option(tmp_path: Path, tape: Callable[..., str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = tape("dev", str(KITCHEN), "--data", str(tmp_path / "d"), "--port", "0", "--metrics-port", str(port))
    assert f"127.0.0.1:{port}" in line and "--metrics-port" in line
    assert tape("dev", str(tmp_path / "nope"))  # the node stopped cleanly: the data directory is free again
    status = cli.main(["doctor", "--data", str(tmp_path / "d")])
    assert status == 0
