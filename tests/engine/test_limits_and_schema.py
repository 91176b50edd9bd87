"""Transaction limits are enforced with clear errors; schema changes that data violates are refused."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.app import App
from engine.errors import ArgumentError, LimitExceeded, SchemaViolation

APPS = Path(__file__).parent.parent / "apps"


async def test_write_read_size_depth_and_time_limits(make_runtime) -> None:
    rt = await make_runtime("limits")
    with pytest.raises(LimitExceeded, match="wrote more than 8192 documents"):
        await rt.run_mutation("stress:insert_many", {"n": 8193})
    await rt.run_mutation("stress:insert_many", {"n": 8192})
    await rt.run_mutation("stress:insert_many", {"n": 8192})
    await rt.run_mutation("stress:insert_many", {"n": 1})
    with pytest.raises(LimitExceeded, match="read more than 16384 documents"):
        rt.run_query("stress:read_all", {})
    with pytest.raises(LimitExceeded, match="over the 1048576 byte limit"):
        await rt.run_mutation("stress:big_doc", {"size": (1 << 20) + 10})
    assert (await rt.run_mutation("stress:big_doc", {"size": 1000})).value
    with pytest.raises(ArgumentError, match="too nested .nesting deeper than 16 levels"):
        await rt.run_mutation("stress:deep_doc", {"depth": 70})
    with pytest.raises(LimitExceeded, match="longer than 1s"):
        rt.run_query("stress:spin", {})


async def test_time_bound_interrupts_a_handler_at_its_next_database_call(make_runtime) -> None:
    rt = await make_runtime("limits")
    await rt.run_mutation("stress:insert_many", {"n": 1})
    with pytest.raises(LimitExceeded, match="longer than 1s"):
        rt.run_query("stress:spin_reading", {})


async def test_schema_change_violated_by_data_is_refused_with_ids(make_runtime, tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    shutil.copytree(APPS / "kitchen", app_dir)
    rt = await make_runtime(str(app_dir))
    list_id = (await rt.run_mutation("lists:create", {"name": "groceries"})).value
    schema = app_dir / "schema.py"
    schema.write_text(schema.read_text().replace('"lists": define_table({"name": v.string()})',
                                                 '"lists": define_table({"name": v.string(), "owner": v.string()})'))
    with pytest.raises(SchemaViolation) as err:
        rt.install_app(App.load(app_dir))
    assert err.value.ids == [list_id] and "owner" in str(err.value) and list_id in str(err.value)
    assert rt.run_query("lists:all_lists", {}).value[0]["name"] == "groceries"  # still serving the old app
