"""Smoke test of the migration benchmark: it runs end to end and reports well-formed numbers (no timing asserted)."""
from __future__ import annotations

from bench import cli, migration_bench


def test_migration_bench_runs_small() -> None:
    r = migration_bench.run(quick=True, documents=300)
    assert r["documents"] == 300
    for kind in ("convex_export", "tape_export", "convex_import", "tape_import"):
        assert r[f"{kind}_docs_per_s"] > 0 and r[f"{kind}_s"] > 0
    assert r["export_ratio"] > 0 and r["import_ratio"] > 0 and r["convex_zip_bytes"] > 0
    assert "Convex ZIP export" in migration_bench.headline(r)
    assert "migration" in cli.WORKLOADS and cli.headline("migration", r) == migration_bench.headline(r)


def test_migration_rows_in_the_report() -> None:
    from bench import report
    r = {"documents": 10, "convex_export_docs_per_s": 5, "tape_export_docs_per_s": 10,
         "convex_import_docs_per_s": 8, "tape_import_docs_per_s": 4}
    rows = [x for x in report.comparisons({"migration": r}) if x["section"] == "migration"]
    assert [x["ratio"] for x in rows] == [0.5, 2.0]
