"""`tape env`: list, set and remove a deployment's environment variables (with the admin key).

    tape env list   http://127.0.0.1:3210                  # NAME=VALUE lines
    tape env set    http://127.0.0.1:3210 OPENAI_KEY sk-...
    tape env remove http://127.0.0.1:3210 OPENAI_KEY
    tape env set URL NAME VALUE --data DATA_DIR             # the key in DATA_DIR/admin_key
    tape env set URL NAME VALUE --admin-key-file PATH       # or $TAPE_ADMIN_KEY_FILE / $TAPE_ADMIN_KEY

Variables are stored in the log (so restores and replicas carry them) and
functions read them as `ctx.env["NAME"]` / `ctx.env.get("NAME")`; a change is
seen by the next function call, no restart needed. Names: a letter, then
letters, digits or underscores (at most 40); values: at most 8 KiB.
"""
from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Any

import orjson

from ops.errors import CliError
from ops.help import HelpFormatter
from ops.run_cmd import _key as run_key

TIMEOUT_SECONDS = 30.0

ENV_HELP = """\
List, set or remove the environment variables of a running deployment (with the admin key).
Functions read them as ctx.env["NAME"] or ctx.env.get("NAME"); a change is seen by the next
call, no restart needed, and is stored in the log (restores and replicas carry it).

  tape env list   http://127.0.0.1:3210 --data DATA_DIR         # NAME=VALUE lines
  tape env set    http://127.0.0.1:3210 OPENAI_API_KEY sk-... --data DATA_DIR
  tape env set    URL NAME - --data DATA_DIR                      # the value from stdin
  tape env remove URL NAME --admin-key-file PATH                  # or $TAPE_ADMIN_KEY_FILE / $TAPE_ADMIN_KEY

Names: a letter, then letters, digits or underscores (at most 40). Values: at most 8 KiB.
"""


def register(subparsers: Any) -> None:
    """Add the `env` sub-command (called by ops.cli)."""
    p = subparsers.add_parser("env", help="list, set or remove the deployment's environment variables",
                              description=ENV_HELP, formatter_class=HelpFormatter)
    p.add_argument("action", choices=["list", "set", "remove"], help="what to do")
    p.add_argument("url", help="the deployment, e.g. http://127.0.0.1:3210")
    p.add_argument("name", nargs="?", help="the variable's name (set, remove)")
    p.add_argument("value", nargs="?", help="the value (set; '-' reads it from stdin)")
    p.add_argument("--admin-key-file", help="a file holding the admin key")
    p.add_argument("--data", help="the deployment's data directory (its admin_key file is used)")
    p.set_defaults(func=cmd_env)


def request_env(url: str, key: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """GET (no body) or POST /api/admin/env; the decoded answer, or CliError with the server's message."""
    request = urllib.request.Request(
        url.rstrip("/") + "/api/admin/env", method="GET" if body is None else "POST",
        data=None if body is None else orjson.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": f"Convex {key}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            message = orjson.loads(raw).get("message")
        except (orjson.JSONDecodeError, AttributeError):
            message = raw.decode(errors="replace")
        raise CliError(f"{url} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def _key(args: argparse.Namespace) -> str:
    """The admin key, found as `tape run` finds it."""
    try:
        return run_key(args)
    except CliError as exc:
        raise CliError(str(exc).replace("tape run", "tape env")) from None


def cmd_env(args: argparse.Namespace) -> None:
    """Run `tape env` (see the module docstring)."""
    if args.action == "list":
        if args.name is not None:
            raise CliError("tape env list takes only the URL")
        for var in request_env(args.url, _key(args))["variables"]:
            sys.stdout.write(f"{var['name']}={var['value']}\n")
        return
    if not args.name:
        raise CliError(f"tape env {args.action} needs a NAME")
    if args.action == "remove":
        if args.value is not None:
            raise CliError("tape env remove takes no VALUE")
        request_env(args.url, _key(args), {"remove": [args.name]})
        sys.stdout.write(f"removed {args.name}\n")
        return
    if args.value is None:
        raise CliError("tape env set needs a VALUE (or '-' to read it from stdin)")
    value = sys.stdin.read().rstrip("\n") if args.value == "-" else args.value
    request_env(args.url, _key(args), {"set": {args.name: value}})
    sys.stdout.write(f"set {args.name}\n")
