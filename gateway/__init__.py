"""The network edge: the Convex sync protocol over WebSocket, the HTTP API and admin routes.

The gateway owns sessions, shared query executions and the read-set range
index that decides which subscriptions a committed record touches; it runs
functions through the engine and never touches the log or the projection
directly except through the `Node` that wires them together. It may import
values, log, storage, projections, history and engine, never ops.
"""
