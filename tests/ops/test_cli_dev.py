"""`tape dev`: start-up messages, clear errors, hot reload and clean shutdown."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import urllib.request

from tests.server_process import ROOT, ServerProcess

APPS = Path(__file__).parent.parent / "apps"


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def call(url: str, kind: str, path: str, args: dict) -> dict:  # type: ignore[type-arg]
    req = urllib.request.Request(f"{url}/api/{kind}", data=orjson.dumps({"path": path, "args": args}),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return orjson.loads(r.read())
    except urllib.error.HTTPError as err:
        return orjson.loads(err.read())


def test_prints_url_and_functions_then_stops_cleanly(tmp_path: Path) -> None:
    server = ServerProcess(APPS / "kitchen", tmp_path / "data").start()
    created = call(server.url, "mutation", "lists:create", {"name": "kept"})["value"]
    assert server.stop() == 0
    out = server.output()
    assert f"http://127.0.0.1:{server.port}" in out
    assert "mutation lists:create" in out and "query    lists:items" in out
    assert "Stopped cleanly" in out and "Traceback" not in out
    again = ServerProcess(APPS / "kitchen", tmp_path / "data").start()
    try:
        assert call(again.url, "query", "lists:get", {"id": created})["value"]["name"] == "kept"
    finally:
        again.stop()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    server = ServerProcess(APPS / "kitchen", tmp_path / "a").start()
    try:
        result = run_cli("dev", str(APPS / "kitchen"), "--data", str(tmp_path / "b"), "--port", str(server.port))
        assert result.returncode == 1
        assert "cannot listen" in result.stderr + result.stdout and "--port" in result.stderr + result.stdout
        assert "Traceback" not in result.stderr
    finally:
        server.stop()


def test_app_errors_are_located_not_tracebacks(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("dev", str(empty), "--data", str(tmp_path / "d"))
    assert result.returncode == 1 and "has no functions" in result.stderr and "Traceback" not in result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "mod.py").write_text("from engine import query\n\n@query\nasync def f(ctx):\n    return 1 +\n")
    result = run_cli("dev", str(broken), "--data", str(tmp_path / "d2"))
    assert result.returncode == 1 and "mod.py:5" in result.stderr and "syntax error" in result.stderr
    result = run_cli("dev", str(tmp_path / "missing"))
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_unusable_data_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("dev", str(APPS / "kitchen"), "--data", str(blocker / "data"))
    assert result.returncode == 1 and "data directory" in result.stderr and "Traceback" not in result.stderr


def test_reloads_changed_modules_without_restart(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(APPS / "kitchen", app)
    server = ServerProcess(app, tmp_path / "data").start()
    try:
        assert call(server.url, "query", "extra:hello", {})["status"] == "error"
        (app / "extra.py").write_text("from engine import query\n\n@query(args={})\nasync def hello(ctx):\n    return 'hi'\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if call(server.url, "query", "extra:hello", {}).get("value") == "hi":
                break
            time.sleep(0.2)
        else:
            raise AssertionError("new module was not picked up:\n" + server.output())
        # A broken edit keeps the previous version serving and reports the file and line.
        (app / "extra.py").write_text("from engine import query\n\nthis is not python\n")
        time.sleep(1.5)
        assert call(server.url, "query", "extra:hello", {}).get("value") == "hi"
        assert "extra.py:3" in server.output()
    finally:
        server.stop()
