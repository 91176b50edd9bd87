"""Secrets at rest: owner-only data directories, the admin key from a file or the environment, a safe compose file.

* `tape dev` / `tape serve` (and restore/import targets) leave every directory
  under DATA_DIR 0700 and every file 0600: log segments, RocksDB projection
  files, checkpoints, time-travel states, the admin key. An existing data
  directory open to other users is made owner-only at start, with a WARNING.
* A replica takes the committer's admin key from ``--admin-key-file``,
  ``TAPE_ADMIN_KEY_FILE`` or ``TAPE_ADMIN_KEY``; ``--admin-key KEY`` works but
  warns (it shows in ``ps``).
* ``ops/docker-compose.yml`` has no default admin key and publishes its ports
  on loopback only.
"""
from __future__ import annotations

import logging
import os
import re
import stat
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from gateway.replica import read_admin_key_file
from ops import cli
from ops.errors import CliError
from tests.server_process import ROOT, ServerProcess

KITCHEN = ROOT / "tests" / "apps" / "kitchen"
COMPOSE = ROOT / "ops" / "docker-compose.yml"


def post(url: str, path: str, body: dict, key: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Convex {key}"
    req = urllib.request.Request(url + path, data=orjson.dumps(body), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def loose_entries(root: Path) -> list[str]:
    """Every path under `root` (itself included) that is not a 0700 directory or a 0600 file."""
    found = []
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        mode = stat.S_IMODE(info.st_mode)
        wanted = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
        if mode != wanted:
            found.append(f"{path.relative_to(root.parent)} {mode:04o}")
    return found


def kinds(root: Path) -> set[str]:
    """Which kinds of files exist under a data directory (to show the check covered them)."""
    names = {p.name for p in root.rglob("*") if p.is_file()}
    rel = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    out = set()
    if "admin_key" in names:
        out.add("admin key")
    if any(r.startswith("log/") for r in rel):
        out.add("log")
    if any(r.startswith("projection/") and r.endswith(".sst") for r in rel):
        out.add("projection sst")
    if any(r.startswith("checkpoints/") for r in rel):
        out.add("checkpoint")
    if any(r.startswith(".timetravel/") for r in rel):
        out.add("time travel")
    return out


def test_tape_serve_data_is_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(KITCHEN, data, command="serve", extra=["--checkpoint-interval", "0.2"]).start()
    try:
        key = (data / "admin_key").read_text().strip()
        status, body = post(server.url, "/api/mutation", {"path": "lists:create", "args": {"name": "private"}})
        assert status == 200, body
        for i in range(3):
            post(server.url, "/api/mutation", {"path": "lists:create", "args": {"name": f"more {i}"}})
        status, body = post(server.url, "/api/admin/checkpoints", {}, key)  # a checkpoint now (flushes SSTs)
        assert status == 200, body
        status, body = post(server.url, "/api/admin/query_at",
                            {"path": "lists:all_lists", "args": {}, "offset": 1}, key)  # a time-travel state
        assert status == 200, body
        deadline = time.monotonic() + 10
        while "checkpoint" not in kinds(data) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert {"admin key", "log", "projection sst", "checkpoint", "time travel"} <= kinds(data)
        assert loose_entries(data) == []
    finally:
        assert server.stop() == 0
    assert loose_entries(data) == []
    assert "WARNING" not in server.output()  # a new directory is private from the start: nothing to report


def test_tape_dev_tightens_a_loose_data_directory_with_a_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(KITCHEN, data).start()
    try:
        status, body = post(server.url, "/api/mutation", {"path": "lists:create", "args": {"name": "x"}})
        assert status == 200, body
        assert loose_entries(data) == []
    finally:
        server.stop()
    for path in [data, *data.rglob("*")]:  # as an older Tape (or a umask 022 copy) left it
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    again = ServerProcess(KITCHEN, data).start()
    try:
        status, body = post(again.url, "/api/query", {"path": "lists:all_lists", "args": {}})
        assert status == 200 and [d["name"] for d in body["value"]] == ["x"]
        assert loose_entries(data) == []
        warning = [line for line in again.output().splitlines() if "WARNING" in line and str(data) in line]
        assert len(warning) == 1 and "0755" in warning[0] and "owner-only" in warning[0], again.output()
    finally:
        again.stop()


def test_restore_and_import_targets_are_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(KITCHEN, data).start()
    try:
        for i in range(3):
            post(server.url, "/api/mutation", {"path": "lists:create", "args": {"name": f"l{i}"}})
    finally:
        server.stop()
    for path in [data, *data.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)  # copies would keep these modes
    umask = os.umask(0o022)
    try:
        assert cli.main(["restore", "--from", str(data), "--to", "offset:1", "--data", str(tmp_path / "r")]) == 0
        assert os.umask(0o022) == 0o022  # the command's umask does not leak into the caller
        assert cli.main(["export", "--data", str(data), "--out", str(tmp_path / "snap")]) == 0
        assert cli.main(["import", str(tmp_path / "snap"), "--data", str(tmp_path / "i")]) == 0
    finally:
        os.umask(umask)
    for target in ("r", "i", "snap"):
        assert loose_entries(tmp_path / target) == [], target
    assert loose_entries(data) == []  # the source was made owner-only too


# ----------------------------------------------------------------- the admin key


def parse(*argv: str) -> object:
    return cli.build_parser().parse_args(["serve", str(KITCHEN), "--role", "replica", *argv])


def test_admin_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("TAPE_ADMIN_KEY", raising=False)
    monkeypatch.delenv("TAPE_ADMIN_KEY_FILE", raising=False)
    key_file = tmp_path / "key"
    key_file.write_text("tape_admin_from_file\n")
    key_file.chmod(0o600)
    assert cli._admin_key(parse()) is None
    assert cli._admin_key(parse("--admin-key-file", str(key_file))) == "tape_admin_from_file"
    monkeypatch.setenv("TAPE_ADMIN_KEY", "tape_admin_from_env")
    assert cli._admin_key(parse()) == "tape_admin_from_env"
    monkeypatch.setenv("TAPE_ADMIN_KEY_FILE", str(key_file))
    assert cli._admin_key(parse()) == "tape_admin_from_file"  # the file wins over the plain variable
    assert "WARNING" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with caplog.at_level(logging.WARNING):
        assert cli._admin_key(parse("--admin-key", "tape_admin_on_the_command_line")) == \
            "tape_admin_on_the_command_line"
    assert any("ps" in r.getMessage() and "--admin-key-file" in r.getMessage() for r in caplog.records)
    assert "tape_admin_on_the_command_line" not in caplog.text  # the warning does not repeat the key
    with pytest.raises(CliError, match="not both"):
        cli._admin_key(parse("--admin-key", "k", "--admin-key-file", str(key_file)))
    with pytest.raises(CliError, match=re.escape(str(tmp_path / "missing"))):
        cli._admin_key(parse("--admin-key-file", str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CliError, match="empty"):
        cli._admin_key(parse("--admin-key-file", str(tmp_path / "empty")))
    caplog.clear()
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_admin_key_file(key_file) == "tape_admin_from_file"
    assert any("readable by other users" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("how", ["file", "env-file", "flag"])
def test_replica_gets_the_committers_key_without_the_command_line(tmp_path: Path, how: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAPE_ADMIN_KEY", raising=False)
    monkeypatch.delenv("TAPE_ADMIN_KEY_FILE", raising=False)
    committer = ServerProcess(KITCHEN, tmp_path / "committer", command="serve").start()
    replica: ServerProcess | None = None
    try:
        key = (tmp_path / "committer" / "admin_key").read_text().strip()
        key_file = tmp_path / "committer.key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        extra = ["--role", "replica", "--committer", committer.url, "--log", str(tmp_path / "committer" / "log")]
        if how == "file":
            extra += ["--admin-key-file", str(key_file)]
        elif how == "env-file":
            monkeypatch.setenv("TAPE_ADMIN_KEY_FILE", str(key_file))
        else:
            extra += ["--admin-key", key]
        replica = ServerProcess(KITCHEN, tmp_path / "replica", command="serve", extra=extra).start()
        status, body = post(replica.url, "/api/mutation", {"path": "lists:create", "args": {"name": "via replica"}})
        assert status == 200, body
        assert replica.proc is not None
        command_line = Path(f"/proc/{replica.proc.pid}/cmdline").read_bytes().decode()
        output = replica.output()
        if how == "flag":
            assert key in command_line and "WARNING" in output and "--admin-key-file" in output
        else:
            assert key not in command_line and "WARNING" not in output
        assert key not in output  # never printed
    finally:
        if replica is not None:
            replica.stop()
        committer.stop()


# ----------------------------------------------------------------- docker compose


def test_compose_has_no_default_admin_key_and_publishes_on_loopback_only() -> None:
    text = COMPOSE.read_text()
    config = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # without comments
    uses = re.findall(r"\$\{TAPE_ADMIN_KEY([^}]*)\}", config)
    assert uses, "the compose file no longer passes TAPE_ADMIN_KEY"
    for use in uses:
        assert use.startswith(":?") and len(use) > 2, f"TAPE_ADMIN_KEY{use}: must be required (${{VAR:?message}})"
    assert "change_me" not in text and "tape_admin_" not in config
    ports: list[str] = []
    lines = config.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "ports:":
            indent = len(line) - len(line.lstrip())
            for entry in lines[i + 1:]:
                if not entry.strip():
                    continue
                if len(entry) - len(entry.lstrip()) <= indent or not entry.strip().startswith("-"):
                    break
                ports.append(entry.strip().lstrip("-").strip().strip("\"'"))
    assert len(ports) == 3, ports
    for mapping in ports:
        assert mapping.startswith("127.0.0.1:"), f"port {mapping} is published on every interface"
