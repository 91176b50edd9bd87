"""A new FileLog replica starts from the committer's newest checkpoint, not from offset 0 (gateway.bootstrap)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from projections.checkpoints import list_checkpoints
from tests.bootstrap_flow import bootstrap_while_writing

pytestmark = pytest.mark.slow


async def test_replica_bootstraps_over_the_admin_api_while_writes_continue(tmp_path: Path) -> None:
    output, line = await bootstrap_while_writing(tmp_path, None, history=80)
    assert "bootstrapped from committer" in line, output
    offset = int(re.search(r"checkpoint at offset (\d+)", line).group(1))  # type: ignore[union-attr]
    assert offset >= 80  # the history was not replayed: the checkpoint held it
    assert [c.offset for c in list_checkpoints(tmp_path / "replica")][0] == offset  # kept as its own checkpoint


async def test_replica_bootstraps_from_a_shared_checkpoint_directory(tmp_path: Path) -> None:
    # the committer takes checkpoints on its own schedule; the replica copies the newest from its directory
    output, line = await bootstrap_while_writing(
        tmp_path, None, history=60, extra_replica=["--bootstrap-from", str(tmp_path / "committer" / "checkpoints")],
        committer_extra=["--checkpoint-every", "200ms"])
    assert "bootstrapped from checkpoint directory" in line, output
