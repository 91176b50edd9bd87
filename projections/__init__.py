"""Materialised state: documents and ordered index keys in RocksDB, applied from the log in order.

A projection is always rebuildable from the log: each batch of records is one
RocksDB write batch together with the log offset it reaches. This layer owns
the index-key encoding, the index catalog, replay and checkpoints. It may
import values and log only.
"""
