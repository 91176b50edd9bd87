"""`tape run`: call any function of a running deployment (internal ones included) with the admin key.

    tape run http://127.0.0.1:3210 jobs:cleanup '{"days": 7}'
    tape run URL module:fn --admin-key-file PATH        # or $TAPE_ADMIN_KEY_FILE / $TAPE_ADMIN_KEY
    tape run URL module:fn --data DATA_DIR              # the key in DATA_DIR/admin_key

The call goes to `POST /api/admin/run`, so queries, mutations and actions all
work and the function runs as the admin (no user). The result is printed as
JSON (Convex JSON for values JSON cannot hold) on stdout.
"""
from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from gateway.admin import KEY_FILE
from gateway.replica import AdminKeyFileError, admin_key_from_env, read_admin_key_file
from ops.errors import CliError
from ops.help import HelpFormatter

TIMEOUT_SECONDS = 660.0  # longer than an action may run


RUN_HELP = """\
Call any function of a running deployment (internal ones included) as the admin,
and print its result as JSON.

  tape run http://127.0.0.1:3210 jobs:cleanup '{"days": 7}'
  tape run URL module:fn --data DATA_DIR              # the key in DATA_DIR/admin_key
  tape run URL module:fn --admin-key-file PATH        # or $TAPE_ADMIN_KEY_FILE / $TAPE_ADMIN_KEY
"""


def register(subparsers: Any) -> None:
    """Add the `run` sub-command (called by ops.cli)."""
    p = subparsers.add_parser("run", help="call a function (internal ones too) on a running deployment",
                              description=RUN_HELP, formatter_class=HelpFormatter)
    p.add_argument("url", help="the deployment, e.g. http://127.0.0.1:3210")
    p.add_argument("function", help="module:fn")
    p.add_argument("args", nargs="?", default="{}", help="the arguments as a JSON object (default {})")
    p.add_argument("--admin-key-file", help="a file holding the admin key")
    p.add_argument("--data", help="the deployment's data directory (its admin_key file is used)")
    p.set_defaults(func=cmd_run)


def _key(args: argparse.Namespace) -> str:
    """The admin key: --admin-key-file, else --data DIR/admin_key, else $TAPE_ADMIN_KEY_FILE / $TAPE_ADMIN_KEY."""
    try:
        if args.admin_key_file:
            return read_admin_key_file(args.admin_key_file)
        if args.data:
            return read_admin_key_file(Path(args.data) / KEY_FILE)
        key = admin_key_from_env()
    except AdminKeyFileError as exc:
        raise CliError(str(exc)) from None
    if not key:
        raise CliError("tape run needs the admin key: --admin-key-file PATH, --data DATA_DIR, "
                       "$TAPE_ADMIN_KEY_FILE or $TAPE_ADMIN_KEY")
    return key


def call(url: str, path: str, fn_args: Any, key: str | None) -> tuple[int, Any]:
    """POST /api/admin/run; returns (HTTP status, decoded JSON body)."""
    request = urllib.request.Request(
        url.rstrip("/") + "/api/admin/run", method="POST",
        data=orjson.dumps({"path": path, "args": fn_args, "format": "json"}),
        headers={"Content-Type": "application/json", **({"Authorization": f"Convex {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, orjson.loads(body)
        except orjson.JSONDecodeError:
            return exc.code, {"message": body.decode(errors="replace")}
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def cmd_run(args: argparse.Namespace) -> None:
    """Run `tape run` (see the module docstring)."""
    try:
        fn_args = orjson.loads(args.args)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"the arguments are not valid JSON: {exc}") from None
    if type(fn_args) is not dict:
        raise CliError("the arguments must be a JSON object")
    status, body = call(args.url, args.function, fn_args, _key(args))
    if status == 200 and isinstance(body, dict) and body.get("status") == "success":
        sys.stdout.write(orjson.dumps(body.get("value"), option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    message = body.get("errorMessage") or body.get("message") if isinstance(body, dict) else body
    data = body.get("errorData") if isinstance(body, dict) else None
    raise CliError(f"{args.function} failed ({status}): {message}" + (f"; data: {orjson.dumps(data).decode()}"
                                                                    if data is not None else ""))
