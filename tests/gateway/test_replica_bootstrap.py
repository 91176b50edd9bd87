"""A new FileLog replica starts from the committer's newest checkpoint, not from offset 0 (gateway.bootstrap)."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from projections.checkpoints import list_checkpoints
from tests.bootstrap_flow import APPS, bootstrap_while_writing, call, fill_indexed, indexed_answers
from tests.server_process import ServerProcess

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


async def test_replica_bootstraps_with_its_search_and_vector_indexes_ready(tmp_path: Path) -> None:
    # the committer's fresh checkpoint carries both indexes: the replica answers searches without building them
    committer = ServerProcess(APPS / "indexed", tmp_path / "committer", command="serve",
                              extra=["--role", "committer"]).start(40)
    replica: ServerProcess | None = None
    try:
        await fill_indexed(committer, seed=7, message_batches=4, docs=200)
        # (once its index committed the last writes: documents still pending are scored a little differently)
        await asyncio.sleep(0.5)
        searches, vectors = await indexed_answers(committer)
        assert any(searches) and all(vectors)
        key = (committer.data_dir / "admin_key").read_text().strip()
        replica = ServerProcess(APPS / "indexed", tmp_path / "replica", command="serve", extra=[
            "--role", "replica", "--committer", committer.url, "--log", str(committer.data_dir / "log"),
            "--admin-key", key, "--log-level", "info"])
        await asyncio.to_thread(replica.start, 40)
        # the first search answers (no "still building") and equals the committer's
        assert await indexed_answers(replica) == (searches, vectors)
        output = replica.output()
        assert "bootstrapped from committer" in output, output
        assert "vector index docs.by_embedding loaded from its saved copy" in output, output
        assert "search index messages.search_body built" not in output, output  # no rebuild
    finally:
        if replica is not None:
            assert replica.stop() == 0, replica.output()
        assert committer.stop() == 0, committer.output()
