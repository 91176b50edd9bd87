"""`tape dev` serving HTTP actions: the site URL at start, port checks, hot reload of http.py."""
from __future__ import annotations

import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from ops.cli import main
from tests.ops.test_cli_dev import run_cli
from tests.server_process import ServerProcess, free_port

APPS = Path(__file__).parent.parent / "apps"


def fetch(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(check, what: str, server: ServerProcess, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}:\n{server.output()}")


def test_dev_serves_http_actions_on_the_site_port_and_reloads_http_py(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(APPS / "http", app)
    site_port = free_port()
    server = ServerProcess(app, tmp_path / "data", extra=["--site-port", str(site_port)]).start()
    site = f"http://127.0.0.1:{site_port}"
    try:
        status, body = fetch(site + "/stripe/webhook", orjson.dumps({"type": "charge", "amount": 5}))
        assert status == 200 and "received" in orjson.loads(body)
        status, body = fetch(server.url + "/api/query", orjson.dumps({"path": "events:all", "args": {}}))
        assert orjson.loads(body)["value"] == [{"kind": "charge", "amount": 5}]
        assert fetch(site + "/added")[0] == 404
        text = (app / "http.py").read_text()
        (app / "http.py").write_text(text + '\n\n@http_action\nasync def added(ctx, request):\n'
                                            '    return Response("new route")\n\n'
                                            'http.route(path="/added", method="GET", handler=added)\n')
        wait_for(lambda: fetch(site + "/added") == (200, b"new route"), "the added route was not served", server)
        # A broken edit (a duplicate route) keeps the previous routes serving and names the file and line.
        (app / "http.py").write_text(text + '\nhttp.route(path="/boom", method="GET", handler=boom)\n')
        line = len(text.splitlines()) + 2
        wait_for(lambda: f"http.py:{line}: duplicate route GET /boom" in server.output(), "no located error", server)
        assert fetch(site + "/added") == (200, b"new route")
    finally:
        server.stop()
    out = server.output()
    assert f"HTTP actions at http://127.0.0.1:{site_port}" in out and "Traceback" not in out
    assert "POST     /stripe/webhook" in out and "GET      /echo/*" in out


def test_site_port_is_checked(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    for flags, message in ((["--site-port", str(port)], "is the API port"),
                           (["--site-port", "70000"], "must be a port number"),
                           (["--port", "65535"], "no default site port"),
                           (["--max-http-body-bytes", "0"], "must be positive")):
        argv = ["dev", str(APPS / "http"), "--data", str(tmp_path / "d"), "--port", str(port), *flags]
        assert main(argv) == 1
        assert message in capsys.readouterr().err


def test_a_taken_site_port_is_an_error_when_given_and_a_warning_by_default(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = run_cli("dev", str(APPS / "http"), "--data", str(tmp_path / "a"), "--port", str(free_port()),
                         "--site-port", str(busy))
        assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{busy} for HTTP actions" in result.stderr
        assert "--site-port" in result.stderr and "Traceback" not in result.stderr
        server = ServerProcess(APPS / "http", tmp_path / "b", port=busy - 1).start()  # default site port: busy
        try:
            assert fetch(server.url + "/version")[0] == 200
        finally:
            server.stop()
        assert "HTTP actions are not served (pass --site-port PORT)" in server.output()
