"""ClientCore bookkeeping without a server: query journals are kept and sent back after a reconnect."""
from __future__ import annotations

from typing import Any

import pytest

from client.state import ClientCore
from values.sync_wire import ProtocolError, encode_ts

V0 = {"querySet": 0, "ts": encode_ts(0), "identity": 0}
V1 = {"querySet": 1, "ts": encode_ts(5), "identity": 0}


def updated(journal: Any) -> dict[str, Any]:
    return {"type": "Transition", "startVersion": V0, "endVersion": V1, "modifications": [
        {"type": "QueryUpdated", "queryId": 0, "value": {"page": [], "isDone": True, "continueCursor": "c"},
         "logLines": [], "journal": journal}]}


async def test_journal_is_sent_back_on_add_after_a_reconnect() -> None:
    core = ClientCore("session")
    sent: list[dict[str, Any]] = []
    core.connected(sent.append, 0, None)
    core.subscribe("feed:list", {"paginationOpts": {"numItems": 2.0, "cursor": None}})
    core._flush_mods()
    add = [m for m in sent if m["type"] == "ModifyQuerySet"][-1]["modifications"][0]
    assert "journal" not in add  # a new subscription has none
    core.handle(updated("the-page-end"))
    sent.clear()
    core.disconnected()
    core.connected(sent.append, 1, "closed")
    (resync,) = [m for m in sent if m["type"] == "ModifyQuerySet"]
    assert resync["modifications"][0]["journal"] == "the-page-end"


async def test_a_journal_that_is_not_a_string_is_a_protocol_error() -> None:
    core = ClientCore("session")
    core.connected(lambda m: None, 0, None)
    core.subscribe("feed:list", {})
    core._flush_mods()
    with pytest.raises(ProtocolError, match=r"modifications\[0\].journal"):
        core.handle(updated(42))
