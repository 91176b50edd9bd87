"""The `http.py` router: matching, request/response types, and load errors naming file:line."""
from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from engine.app import App
from engine.errors import AppLoadError
from engine.http_router import (BadRequestBody, BytesBody, HttpRouter, Request, Response, http_action)

APPS = Path(__file__).resolve().parents[1] / "apps"


@http_action
async def handler(ctx, request):  # type: ignore[no-untyped-def]
    return Response("ok")


def test_exact_paths_win_over_prefixes_and_the_longest_prefix_wins() -> None:
    http = HttpRouter()
    http.route(path="/files/readme", method="GET", handler=handler)
    http.route(path_prefix="/files/", method="GET", handler=handler)
    http.route(path_prefix="/files/images/", method="GET", handler=handler)
    http.route(path_prefix="/files/images/", method="PUT", handler=handler)
    assert http.match("GET", "/files/readme").route.path == "/files/readme"  # type: ignore[union-attr]
    assert http.match("GET", "/files/images/a.png").route.prefix == "/files/images/"  # type: ignore[union-attr]
    assert http.match("GET", "/files/other").route.prefix == "/files/"  # type: ignore[union-attr]
    missing = http.match("POST", "/files/images/a.png")
    assert missing.route is None and missing.allowed == ("GET", "PUT")
    assert http.match("GET", "/elsewhere").route is None and http.match("GET", "/elsewhere").allowed == ()
    assert http.match("HEAD", "/files/readme").route.method == "GET"  # type: ignore[union-attr]
    assert http.match("get", "/files/readme").route is None  # (methods arrive upper-case from HTTP)


async def test_request_body_readers() -> None:
    request = Request("POST", "http://h/x", "/x", {}, {}, BytesBody(b'{"a": [1, 2]}'))
    assert await request.json() == {"a": [1, 2]} and await request.text() == '{"a": [1, 2]}'
    streamed = Request("POST", "http://h/x", "/x", {}, {}, BytesBody(b"abcdef", chunk_size=4))
    assert [c async for c in streamed.stream()] == [b"abcd", b"ef"]
    with pytest.raises(RuntimeError, match="consumed"):
        await streamed.bytes()
    with pytest.raises(BadRequestBody, match="not valid JSON"):
        await Request("POST", "u", "/", {}, {}, BytesBody(b"{")).json()
    with pytest.raises(BadRequestBody, match="not UTF-8"):
        await Request("POST", "u", "/", {}, {}, BytesBody(b"\xff")).text()


def test_response_bodies_and_headers() -> None:
    assert Response(b"\x00raw").body == b"\x00raw" and Response(b"x").header("content-type") is None
    text = Response("héllo")
    assert text.body == "héllo".encode() and text.header("Content-Type") == "text/plain; charset=utf-8"
    data = Response({"n": 1}, 201, {"Content-Type": "application/vnd.x+json"})
    assert data.status == 201 and orjson.loads(data.body) == {"n": 1}
    assert data.header("content-type") == "application/vnd.x+json"  # the handler's own Content-Type wins
    assert Response(None).body == b"" and Response.json(None).body == b"null"
    cookies = Response("", headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    assert [v for k, v in cookies.headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    with pytest.raises(ValueError, match="status"):
        Response("x", status=99)
    with pytest.raises(ValueError, match="cannot carry"):
        Response("x", headers={"X-Evil": "a\r\nInjected: 1"})
    with pytest.raises(ValueError, match="JSON value"):
        Response({"s": {1, 2}})


def test_http_action_must_be_async() -> None:
    with pytest.raises(TypeError, match="async def"):
        http_action(lambda ctx, request: None)  # type: ignore[arg-type,return-value]


def _app_with_http(tmp_path: Path, http_py: str) -> Path:
    app = tmp_path / "app"
    shutil.copytree(APPS / "http", app)
    (app / "http.py").write_text(http_py)
    return app


HEADER = "from engine import HttpRouter, Response, http_action\n\n" \
         "@http_action\nasync def ok(ctx, request):\n    return Response('ok')\n\n" \
         "async def plain(ctx, request):\n    return Response('no')\n\nhttp = HttpRouter()\n"  # 10 lines


@pytest.mark.parametrize("line, message", [
    ('http.route(path="/a", method="GET", handler=plain)', "plain is not an HTTP action: declare it with @http_action"),
    ('http.route(path="/a", method="GET", handler=ok); http.route(path="/a", method="GET", handler=ok)',
     "duplicate route GET /a"),
    ('http.route(path="a", method="GET", handler=ok)', "must be a string starting with '/'"),
    ('http.route(path_prefix="/a", method="GET", handler=ok)', "must end with '/'"),
    ('http.route(path="/a", path_prefix="/b/", method="GET", handler=ok)', "exactly one of"),
    ('http.route(path="/a", method="FETCH", handler=ok)', "method must be one of"),
    ('http.route(path="/a?b", method="GET", handler=ok)', "may not hold"),
    ('http.cors(path="/a", origins=[])', "cors origins"),
    ('http.cors(path="/a"); http.route(path="/a", method="OPTIONS", handler=ok)', "duplicate route OPTIONS /a"),
])
def test_bad_routes_are_refused_at_load_with_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    app = _app_with_http(tmp_path, HEADER + line + "\n")
    with pytest.raises(AppLoadError, match=message) as info:
        App.load(app)
    assert str(info.value).startswith(f"{app / 'http.py'}:11: ")


def test_http_py_without_a_router_is_refused(tmp_path: Path) -> None:
    app = _app_with_http(tmp_path, "routes = []\n")
    with pytest.raises(AppLoadError, match=r"http.py must define `http = HttpRouter\(\)`"):
        App.load(app)


def test_an_app_loads_its_router_and_handlers_are_not_functions() -> None:
    app = App.load(APPS / "http")
    assert app.http is not None and len(app.http.routes) >= 10
    assert "http:webhook" not in app.functions and "events:record" in app.functions
    assert App.load(APPS / "kitchen").http is None
