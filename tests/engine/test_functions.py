"""Queries, mutations and actions through the runtime: the public engine surface."""
from __future__ import annotations

import pytest

from engine.errors import (AppError, ArgumentError, FunctionNotFound, InternalFunctionError, ReadOnlyError,
                           SuspendedError)
from values import table_of


async def test_insert_query_patch_delete(make_runtime):
    rt = await make_runtime()
    list_id = (await rt.run_mutation("lists:create", {"name": "groceries"})).value
    assert table_of(list_id) == "lists"
    a = (await rt.run_mutation("lists:add", {"list_id": list_id, "text": "milk"})).value
    b = (await rt.run_mutation("lists:add", {"list_id": list_id, "text": "eggs"})).value
    items = rt.run_query("lists:items", {"list_id": list_id}).value
    assert [i["text"] for i in items] == ["milk", "eggs"]
    assert all(i["_creationTime"] > 0 and isinstance(i["_creationTime"], float) for i in items)
    await rt.run_mutation("lists:toggle", {"id": a})
    assert rt.run_query("lists:open_items", {"list_id": list_id}).value == ["eggs"]
    await rt.run_mutation("lists:remove", {"id": b})
    assert [i["_id"] for i in rt.run_query("lists:items", {"list_id": list_id}).value] == [a]
    latest = rt.run_query("lists:latest", {"list_id": list_id, "n": 5}).value
    assert [d["_id"] for d in latest] == [a]


async def test_index_ranges_and_desc_order(make_runtime):
    rt = await make_runtime()
    list_id = (await rt.run_mutation("lists:create", {"name": "l"})).value
    for rank in [5.0, 1.0, 3.0, 9.0, 7.0]:
        await rt.run_mutation("lists:add", {"list_id": list_id, "text": f"r{rank}", "rank": rank})
    got = rt.run_query("lists:ranked", {"list_id": list_id, "lo": 3, "hi": 9}).value
    assert [d["rank"] for d in got] == [3.0, 5.0, 7.0]
    latest = rt.run_query("lists:latest", {"list_id": list_id, "n": 2}).value
    assert [d["text"] for d in latest] == ["r7.0", "r9.0"]


async def test_patch_delete_sentinel_removes_field(make_runtime):
    rt = await make_runtime()
    list_id = (await rt.run_mutation("lists:create", {"name": "l"})).value
    item = (await rt.run_mutation("lists:add", {"list_id": list_id, "text": "t", "rank": 2})).value
    await rt.run_mutation("lists:unrank", {"id": item})
    (doc,) = rt.run_query("lists:items", {"list_id": list_id}).value
    assert "rank" not in doc


async def test_failed_mutation_leaves_no_trace(make_runtime):
    rt = await make_runtime()
    list_id = (await rt.run_mutation("lists:create", {"name": "l"})).value
    offset = rt.log.next_offset()
    with pytest.raises(AppError) as err:
        await rt.run_mutation("lists:add_then_fail", {"list_id": list_id, "n": 3})
    assert err.value.data == "rolled back"
    assert rt.run_query("lists:items", {"list_id": list_id}).value == []
    assert rt.log.next_offset() == offset


async def test_app_error_data_and_hidden_internal_errors(make_runtime):
    rt = await make_runtime()
    list_id = (await rt.run_mutation("lists:create", {"name": "l"})).value
    with pytest.raises(AppError) as err:
        await rt.run_mutation("lists:add", {"list_id": list_id, "text": ""})
    assert err.value.data == {"code": "EMPTY_TEXT"}
    with pytest.raises(InternalFunctionError) as crash:
        await rt.run_mutation("lists:crash", {})
    assert "secret internal detail" not in str(crash.value)
    assert crash.value.request_id in str(crash.value)


async def test_argument_validation_names_field_and_type(make_runtime):
    """Messages as Convex words them: the path of the argument, the value received, the validator."""
    rt = await make_runtime()
    with pytest.raises(ArgumentError) as info:
        await rt.run_mutation("lists:create", {"name": 3.0})
    assert str(info.value) == ("ArgumentValidationError: Value does not match validator.\nPath: .name\n"
                               "Value: 3\nValidator: v.string()")
    with pytest.raises(ArgumentError, match=r'Path: \.list_id\nValue: "nope"\nValidator: v\.id\("lists"\)'):
        rt.run_query("lists:items", {"list_id": "nope"})
    list_id = (await rt.run_mutation("lists:create", {"name": "l"})).value
    item = (await rt.run_mutation("lists:add", {"list_id": list_id, "text": "t"})).value
    with pytest.raises(ArgumentError, match=r"from table `items`, which does not match the table name in validator "
                                            r"`v\.id\(\"lists\"\)`\.\nPath: \.list_id"):
        rt.run_query("lists:items", {"list_id": item})  # an id from another table
    with pytest.raises(ArgumentError) as info:
        await rt.run_mutation("lists:create", {"name": "x", "extra": 1.0})
    assert str(info.value) == ("ArgumentValidationError: Object contains extra field `extra` that is not in the "
                               'validator.\n\nObject: {name: "x", extra: 1}\nValidator: v.object({name: v.string()})')
    with pytest.raises(ArgumentError) as info:
        await rt.run_mutation("lists:create", {})
    assert str(info.value).startswith("ArgumentValidationError: Object is missing the required field `name`. "
                                      "Consider wrapping the field validator in `v.optional(...)`")
    with pytest.raises(ArgumentError, match=r"Path: \.name\nValue: 7n\n"):  # an int64 shows as 7n, as in Convex
        await rt.run_mutation("lists:create", {"name": 7})


async def test_queries_are_read_only_and_may_not_suspend(make_runtime):
    rt = await make_runtime()
    with pytest.raises(ReadOnlyError):
        rt.run_query("lists:tries_to_write", {})
    with pytest.raises(SuspendedError, match="awaited real I/O"):
        await rt.run_mutation("lists:sleepy", {})


async def test_internal_functions_unreachable_from_clients(make_runtime):
    rt = await make_runtime()
    with pytest.raises(FunctionNotFound):
        rt.run_query("lists:secret", {})
    assert rt.run_query("lists:secret", {}, allow_internal=True).value == "internal"


async def test_actions_call_other_functions(make_runtime):
    rt = await make_runtime()
    out = await rt.run_action("lists:create_via_action", {"name": "from action"})
    assert out["name"] == "from action" and out["secret"] == "internal"
    assert table_of(out["id"]) == "lists"


async def test_pagination_walks_everything_once(make_runtime):
    rt = await make_runtime()
    list_id = (await rt.run_mutation("lists:create", {"name": "l"})).value
    ids = [(await rt.run_mutation("lists:add", {"list_id": list_id, "text": str(i)})).value for i in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        page = rt.run_query("lists:page", {"list_id": list_id, "paginationOpts": {"numItems": 3, "cursor": cursor}}).value
        seen += [d["_id"] for d in page["page"]]
        cursor = page["continueCursor"]
        pages += 1
        if page["isDone"]:
            break
    assert seen == ids and pages == 3


async def test_serial_execution_under_contention(make_runtime):
    import asyncio
    rt = await make_runtime("bank")
    owners = [f"u{i}" for i in range(5)]
    await rt.run_mutation("accounts:seed", {"owners": owners, "balance": 100.0})

    async def mover(i: int) -> None:
        for j in range(20):
            try:
                await rt.run_mutation("accounts:transfer", {"src": owners[(i + j) % 5], "dst": owners[(i * 3 + j + 1) % 5], "amount": 7.0})
            except AppError:
                pass
    await asyncio.gather(*(mover(i) for i in range(16)))
    assert rt.run_query("accounts:total", {}).value == 500.0
    assert rt.committer.batches < rt.committer.committed  # group commit batched mutations


async def test_exactly_once_by_session_and_request(make_runtime):
    rt = await make_runtime()
    first = await rt.run_mutation("lists:create", {"name": "once"}, session_id="s1", request_id=7)
    again = await rt.run_mutation("lists:create", {"name": "once"}, session_id="s1", request_id=7)
    assert again.value == first.value and again.ts == first.ts and again.replayed
    assert len(rt.run_query("lists:all_lists", {}).value) == 1
