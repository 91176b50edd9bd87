"""`tape serve` options of the log's lifecycle: --retain, --archive, --checkpoint-every, --bootstrap-from."""
from __future__ import annotations

from pathlib import Path

import pytest

from ops.cli import CliError, _lifecycle_options, build_parser


def options(*argv: str) -> dict[str, object]:
    return _lifecycle_options(build_parser().parse_args(["serve", "app", *argv]))


def test_checkpoints_are_scheduled_by_default_only_when_needed(tmp_path: Path) -> None:
    assert options()["checkpoint_interval"] == 0.0  # a FileLog without retention: keep everything, no schedule
    assert options("--log", "kafka://h:9092/t")["checkpoint_interval"] == 300.0  # replicas start from them
    kept = options("--retain", "30d")
    assert kept["retain_seconds"] == 30 * 86400 and kept["checkpoint_interval"] == 300.0 and kept["archive"] is None
    assert options("--retain", "8s")["checkpoint_interval"] == 1.0  # an eighth of a short window
    assert options("--retain", "1h", "--checkpoint-every", "0")["checkpoint_interval"] == 0.0
    assert options("--checkpoint-interval", "7")["checkpoint_interval"] == 7.0
    assert options("--retain", "1d", "--archive", "NONE")["archive"] == "none"
    assert options("--retain", "1d", "--archive", str(tmp_path / "a"))["archive"] == str(tmp_path / "a")
    assert options("--bootstrap-from", str(tmp_path))["bootstrap_from"] == tmp_path.resolve()


@pytest.mark.parametrize("argv,message", [
    (["--retain", "soon"], "--retain: 'soon' is not a duration"),
    (["--retain", "0s"], "--retain: give a positive duration"),
    (["--archive", "/x"], "--archive only applies with --retain"),
    (["--checkpoint-every", "often"], "--checkpoint-every: 'often' is not a duration"),
])
def test_bad_lifecycle_options_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(CliError, match=message):
        options(*argv)
