"""The `tape bench` workloads: benchmark code kept in the source tree, not in the installed packages.

``tape bench`` (see `ops.bench_cmd`) imports `bench.cli` from the checkout
next to the installed ``ops`` package; the workloads' helper servers run as
``python -m bench.<module>`` from the repository root.
"""
