"""`tape logs`: stream a running deployment's function logs, as ``npx convex logs`` does.

    tape logs http://127.0.0.1:3210 --data app/.tape            # the key in DATA_DIR/admin_key
    tape logs URL --function lists:add --function jobs           # only these functions (a module: all of it)
    tape logs URL --history 50 --jsonl                           # the last 50 entries first, one JSON per line

Each finished call that printed or logged something (or failed) is shown as
its lines, prefixed like the official clients print them:
``2026-12-04T18:40:01.123Z [CONVEX M(lists:add)] [LOG] adding milk``. It
follows ``GET /api/admin/logs`` (admin key: ``--admin-key-file``, ``--data``,
``$TAPE_ADMIN_KEY_FILE`` or ``$TAPE_ADMIN_KEY``) until interrupted.
"""
from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Any, Iterator, TextIO

import orjson

from ops.errors import CliError
from ops.run_cmd import _key

KIND_LETTER = {"query": "Q", "mutation": "M", "action": "A"}


def register(subparsers: Any) -> None:
    """Add the `logs` sub-command (called by ops.cli)."""
    p = subparsers.add_parser("logs", help="stream a running deployment's function logs",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="the deployment, e.g. http://127.0.0.1:3210")
    p.add_argument("--function", action="append", default=[], metavar="PATH",
                   help="only this function (module:fn) or module; repeatable")
    p.add_argument("--history", type=int, default=0, metavar="N", help="first show the last N entries (default 0)")
    p.add_argument("--jsonl", action="store_true", help="print each entry as one JSON object per line")
    p.add_argument("--no-follow", action="store_true", help="print the history and stop")
    p.add_argument("--admin-key-file", help="a file holding the admin key")
    p.add_argument("--data", help="the deployment's data directory (its admin_key file is used)")
    p.set_defaults(func=cmd_logs)


def logs_url(url: str, functions: list[str], history: int, follow: bool) -> str:
    """The `/api/admin/logs` URL for these options."""
    query = [("history", str(history)), ("follow", "1" if follow else "0")]
    query += [("function", f) for f in functions]
    return url.rstrip("/") + "/api/admin/logs?" + urllib.parse.urlencode(query)


def entries(url: str, key: str) -> Iterator[dict[str, Any]]:
    """The log entries the server streams (one decoded JSON object per NDJSON line)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Convex {key}"})
    try:
        response = urllib.request.urlopen(request)  # no timeout: an idle stream is quiet, not dead
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        try:
            body = orjson.loads(body).get("message", body)
        except (orjson.JSONDecodeError, AttributeError):
            pass
        raise CliError(f"the server refused the log stream (HTTP {exc.code}): {body}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    with response:
        for line in response:
            line = line.strip()
            if line:
                yield orjson.loads(line)


def format_entry(entry: dict[str, Any]) -> list[str]:
    """The text lines of one entry: each log line, then the error if the call failed."""
    if "dropped" in entry:
        return [f"(the server dropped {entry['dropped']} log entries: this reader fell behind)"]
    when = datetime.fromtimestamp(entry["ts"], timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    prefix = f"{when} [CONVEX {KIND_LETTER.get(entry.get('kind', ''), '?')}({entry['path']})]"
    out = [f"{prefix} {line}" for line in entry.get("logLines", [])]
    if entry.get("error"):
        out.append(f"{prefix} {entry['error']}")
    return out


def show(stream: Iterator[dict[str, Any]], out: TextIO, jsonl: bool) -> int:
    """Print every entry of `stream` to `out`; returns how many entries were printed."""
    n = 0
    for entry in stream:
        if jsonl:
            out.write(orjson.dumps(entry).decode() + "\n")
        else:
            for line in format_entry(entry):
                out.write(line + "\n")
        out.flush()
        n += 1
    return n


def cmd_logs(args: argparse.Namespace) -> None:
    """Run `tape logs` (see the module docstring)."""
    if args.history < 0:
        raise CliError("--history must be >= 0")
    key = _key(args)
    url = logs_url(args.url, args.function, args.history, not args.no_follow)
    show(entries(url, key), sys.stdout, args.jsonl)
