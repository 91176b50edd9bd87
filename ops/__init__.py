"""The `tape` command line: dev server, serve roles, restore, export, stream, doctor.

Only argument handling and terminal output live here; the work is done by the
layers below (history for restore/export/stream, gateway for serving).
Nothing imports ops.
"""
