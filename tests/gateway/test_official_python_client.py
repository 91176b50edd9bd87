"""The unmodified PyPI `convex` client against a real `tape dev` server."""
from __future__ import annotations

import threading

import pytest
from convex import ConvexClient, ConvexError


def test_subscribe_mutate_update_and_errors(server_factory) -> None:
    server = server_factory("kitchen")
    alice, bob = ConvexClient(server.url), ConvexClient(server.url)
    list_id = alice.mutation("lists:create", {"name": "groceries"})
    updates = iter(alice.subscribe("lists:items", {"list_id": list_id}))
    assert next(updates) == []
    bob.mutation("lists:add", {"list_id": list_id, "text": "milk"})
    first = next(updates)
    assert [i["text"] for i in first] == ["milk"]
    assert alice.query("lists:open_items", {"list_id": list_id}) == ["milk"]
    with pytest.raises(ConvexError) as err:
        bob.mutation("lists:add", {"list_id": list_id, "text": ""})
    assert err.value.data == {"code": "EMPTY_TEXT"}
    with pytest.raises(Exception, match="Request ID"):
        bob.mutation("lists:crash", {})
    with pytest.raises(Exception, match="Could not find public function"):
        bob.query("lists:secret", {})
    out = bob.action("lists:create_via_action", {"name": "via action"})
    assert out["name"] == "via action"


def test_mutation_resolves_after_own_update(server_factory) -> None:
    """Read-your-writes: after mutation() returns, a subscription already shows it."""
    server = server_factory("bank")
    client = ConvexClient(server.url)
    client.mutation("accounts:seed", {"owners": ["a", "b"], "balance": 100})
    seen: list[object] = []
    sub = client.subscribe("accounts:balance", {"owner": "a"})
    it = iter(sub)
    seen.append(next(it))
    for i in range(5):
        assert client.mutation("accounts:transfer", {"src": "a", "dst": "b", "amount": 1}) == 99.0 - i
    t = threading.Thread(target=lambda: seen.append(next(it)), daemon=True)
    t.start()
    t.join(5)
    assert seen[0] == 100.0 and seen[-1] < 100.0
