"""The writer's caches (committed documents, small index scans) never serve stale state.

Each test drives mutations through the pipelined committer so that reads,
index-key changes and applies interleave across batches, then checks the
answers against what serial execution must give and the live projection
against one rebuilt from the log (so an update applied as "document only"
really left every index key as it was).
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

from engine.errors import AppError
from engine.limits import DEFAULT_LIMITS
from projections.rebuild import rebuild


async def _assert_projection_matches_log(rt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rebuilt = await rebuild(rt.log, tmp_path / "rebuilt", rt.app.schema.index_catalog())
    try:
        assert rebuilt.content_digest() == rt.projection.content_digest()
    finally:
        rebuilt.close()


async def test_lookup_after_delete_and_reinsert_sees_the_new_document(make_runtime, tmp_path: Path) -> None:
    rt = await make_runtime("bank")
    await rt.run_mutation("accounts:seed", {"owners": ["a", "b"], "balance": 100.0})
    assert (await rt.run_mutation("accounts:transfer", {"src": "a", "dst": "b", "amount": 1.0})).value == 99.0
    # The lookup of "a" is now cached; delete it and insert a fresh "a", all in flight together.
    calls = [
        rt.run_mutation("accounts:close", {"owner": "a"}, allow_internal=True),
        rt.run_mutation("accounts:seed", {"owners": ["a"], "balance": 7.0}),
        rt.run_mutation("accounts:transfer", {"src": "a", "dst": "b", "amount": 2.0}),
    ]
    outcomes = await asyncio.gather(*calls)
    assert outcomes[2].value == 5.0  # the new "a" (7 - 2), not the deleted one
    # And once more in later batches, after every apply.
    assert (await rt.run_mutation("accounts:transfer", {"src": "a", "dst": "b", "amount": 1.0})).value == 4.0
    assert rt.run_query("accounts:balances", {"owners": ["a", "b"]}).value == {"a": 4.0, "b": 104.0}
    await _assert_projection_matches_log(rt, tmp_path)


async def test_concurrent_mixed_mutations_match_a_serial_model(make_runtime, tmp_path: Path) -> None:
    rt = await make_runtime("bank")
    owners = [f"o{i}" for i in range(30)]
    await rt.run_mutation("accounts:seed", {"owners": owners, "balance": 1000.0})
    model = {o: 1000.0 for o in owners}
    rng = random.Random(7)
    for _round in range(15):
        ops = []
        exists = set(model)
        for _ in range(40):
            kind = rng.random()
            a, b = rng.sample(owners, 2)
            if kind < 0.8:
                ops.append(("transfer", a, b, float(rng.randint(1, 50))))
            elif kind < 0.9:
                ops.append(("close", a, None, 0.0))
                exists.discard(a)
            elif a not in exists:  # (seeding an existing owner would make its lookups ambiguous)
                ops.append(("seed", a, None, float(rng.randint(1, 500))))
                exists.add(a)
        # Submitted together: they execute in submission order, spread over pipelined batches.
        futures = []
        for kind, a, b, amount in ops:
            if kind == "transfer":
                futures.append(rt.run_mutation("accounts:transfer", {"src": a, "dst": b, "amount": amount}))
            elif kind == "close":
                futures.append(rt.run_mutation("accounts:close", {"owner": a}, allow_internal=True))
            else:
                futures.append(rt.run_mutation("accounts:seed", {"owners": [a], "balance": amount}))
        results = await asyncio.gather(*futures, return_exceptions=True)
        for (kind, a, b, amount), result in zip(ops, results):
            if kind == "transfer":
                if a not in model or b not in model:
                    assert isinstance(result, AppError) and result.data == {"code": "NO_SUCH_ACCOUNT"}
                elif model[a] < amount:
                    assert isinstance(result, AppError) and result.data["code"] == "INSUFFICIENT_FUNDS"
                else:
                    model[a] -= amount
                    model[b] += amount
                    assert not isinstance(result, BaseException) and result.value == model[a]
            elif kind == "close":
                model.pop(a, None)
            else:
                model[a] = amount
        live = rt.run_query("accounts:balances", {"owners": owners}).value
        assert live == {o: model.get(o) for o in owners}
    await _assert_projection_matches_log(rt, tmp_path)


async def test_patches_of_indexed_and_unindexed_fields_rebuild_identically(make_runtime, tmp_path: Path) -> None:
    rt = await make_runtime("kitchen")
    list_id = (await rt.run_mutation("lists:create", {"name": "l"})).value
    ids = [(await rt.run_mutation("lists:add", {"list_id": list_id, "text": f"t{i}", "rank": float(i)})).value
           for i in range(10)]
    futures = []
    for i, item in enumerate(ids):
        futures.append(rt.run_mutation("lists:toggle", {"id": item}))  # unindexed field
        if i % 2:
            futures.append(rt.run_mutation("lists:unrank", {"id": item}))  # an indexed field goes away
        futures.append(rt.run_mutation("lists:toggle", {"id": item}))
        if i % 3 == 0:
            futures.append(rt.run_mutation("lists:remove", {"id": item}))
    await asyncio.gather(*futures)
    ranked = rt.run_query("lists:ranked", {"list_id": list_id, "lo": 0.0, "hi": 100.0}).value
    assert [d["text"] for d in ranked] == [f"t{i}" for i in range(10) if i % 2 == 0 and i % 3 != 0]
    assert all(d["done"] is False for d in ranked)
    await _assert_projection_matches_log(rt, tmp_path)


async def test_caches_stay_within_their_byte_budgets_and_answers_stay_right(make_runtime) -> None:
    budget_docs, budget_scans = 150_000, 40_000
    rt = await make_runtime("bank", limits=replace(DEFAULT_LIMITS, document_cache_bytes=budget_docs,
                                                   scan_cache_bytes=budget_scans))
    owners = [f"o{i}" for i in range(3000)]
    for i in range(0, len(owners), 500):
        await rt.run_mutation("accounts:seed", {"owners": owners[i:i + 500], "balance": 1000.0})
    rng = random.Random(5)
    committer = rt.committer
    peak_docs = peak_scans = 0
    for _ in range(20):
        pairs = [rng.sample(owners, 2) for _ in range(100)]
        await asyncio.gather(*(rt.run_mutation("accounts:transfer", {"src": a, "dst": b, "amount": 1.0})
                               for a, b in pairs))
        peak_docs = max(peak_docs, committer.document_cache_bytes)
        peak_scans = max(peak_scans, committer._scans.bytes)
    # Over budget only by what one batch adds before the next batch's check empties it.
    assert peak_docs <= budget_docs + 200 * 400 and peak_scans <= budget_scans
    assert committer.document_cache_clears > 0 and committer._scans.clears > 0
    total = sum(sum(rt.run_query("accounts:balances", {"owners": owners[i:i + 1000]}).value.values())
                for i in range(0, len(owners), 1000))  # (an object holds at most 1,024 fields)
    assert total == 3000 * 1000.0
