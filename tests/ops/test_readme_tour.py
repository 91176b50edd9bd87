"""The README's 5-minute tour, run as a new user would: its code blocks, in order, in a fresh home directory.

Each ``python`` block whose first line is ``# PATH`` is saved as that file; each ``sh``
block runs in one bash session, as typed (``make install`` excepted: the test runs in the
virtualenv it would create, which ``.venv`` in a stand-in checkout points to, so
``source .venv/bin/activate`` really runs). ``tape dev`` is started in the
background as the tour's "leave it running" says, and the tour's port is swapped
for a free one. The ``js`` block needs a bundler and is only checked to name the port.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.server_process import ROOT, free_port

README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```\n", re.M | re.S)
TOUR_PORT = "3300"


def tour_blocks() -> list[tuple[str, str]]:
    """(language, text) of each code block of the '## A 5-minute tour' section."""
    text = README.read_text()
    start = text.index("## A 5-minute tour\n")
    end = text.index("\n## ", start + 1)
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text[start:end])]


def tour_script(blocks: list[tuple[str, str]], port: int) -> str:
    """One bash script doing what the tour tells the reader to do."""
    lines = ["set -euo pipefail"]
    for language, text in blocks:
        text = text.replace(TOUR_PORT, str(port))
        if language == "python":
            first = text.splitlines()[0]
            assert first.startswith("# "), f"a python block must start with '# FILE': {first!r}"
            path = first[2:].strip()
            lines += [f"mkdir -p \"$(dirname {path})\"", f"cat > {path} <<'TOUR_EOF'", text.rstrip("\n"), "TOUR_EOF"]
        elif language == "sh":
            for line in text.splitlines():
                command = line.split("  #")[0].strip()
                if command == "make install":
                    continue  # the test runs in the virtualenv `make install` makes
                if command.startswith("tape dev "):  # "leave it running"
                    lines += [f"{command} > tape-dev.log 2>&1 &", "TAPE_PID=$!",
                              # Ctrl-C for the server when the tour ends, however it ends
                              """trap 'kill -INT "$TAPE_PID" 2>/dev/null; wait "$TAPE_PID"' EXIT""",
                              f"for i in $(seq 100); do curl -sf localhost:{port}/version >/dev/null && break; "
                              "sleep 0.2; done", "echo TAPE READY"]
                    continue
                lines.append(line)
    lines.append("echo TOUR DONE")
    return "\n".join(lines) + "\n"


def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    blocks = tour_blocks()
    languages = [language for language, _ in blocks]
    assert languages.count("python") >= 4 and "sh" in languages
    files = [text.splitlines()[0] for language, text in blocks if language == "python"]
    assert files[:3] == ["# app/schema.py", "# app/lists.py", "# app/items.py"]  # one file per block
    js = [text for language, text in blocks if language == "js"]
    assert all(f"127.0.0.1:{TOUR_PORT}" in text for text in js)
    checkout, home = tmp_path / "checkout", tmp_path / "home"
    checkout.mkdir()
    home.mkdir()
    (checkout / ".venv").symlink_to(Path(sys.prefix))  # the virtualenv `make install` creates
    port = free_port()
    script = tour_script(blocks, port)
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8"}
    proc = subprocess.Popen(["bash", "-c", script], cwd=checkout,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    server_log = (home / "tape-tour" / "tape-dev.log")
    log_text = server_log.read_text() if server_log.exists() else "(no server log)"
    assert "TOUR DONE" in out, out + "\n--- tape dev:\n" + log_text
    assert proc.returncode == 0, out
    assert "TAPE READY" in out and f"http://127.0.0.1:{port}" in log_text
    assert "mutation lists:create" in log_text and "Admin key (shown once" in log_text
    # Step 3: the calls succeed, the item is there, and the failed call answers HTTP 560 with its data.
    assert len(re.findall(r'^\{"status":"success"', out, re.M)) == 3, out  # one answer per line
    assert '"text":"milk"' in out
    assert '"errorData":{"code":"EMPTY_TEXT"}} HTTP 560' in out, out
    # Step 4: the script printed the empty list, then the pushed update.
    assert re.search(r"^\[\]$", out, re.M) and "'text': 'bread'" in out, out
    assert "Traceback" not in out + log_text and "Stopped cleanly" in log_text
