"""`values.ids`: fresh ids are unique (also across threads and a fork) and name their table."""
from __future__ import annotations

import base64
import os
import threading

from values.ids import new_id, table_of


def random_part(doc_id: str) -> bytes:
    """The random bytes at the end of an id (after the table name and the clock)."""
    return base64.urlsafe_b64decode(doc_id + "=" * (-len(doc_id) % 4))[-10:]


def test_ids_are_unique_and_carry_their_table() -> None:
    ids = [new_id("messages") for _ in range(20_000)]  # spans many refills of the random pool
    assert len(set(ids)) == len(ids) and len({random_part(i) for i in ids}) == len(ids)
    assert {table_of(i) for i in ids} == {"messages"}


def test_threads_draw_different_bytes() -> None:
    found: list[list[str]] = [[], []]

    def draw(out: list[str]) -> None:
        out.extend(new_id("t") for _ in range(2_000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in found]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(found[0]) & set(found[1])


def test_a_forked_child_does_not_repeat_the_parents_bytes() -> None:
    new_id("t")  # the parent's pool holds unused bytes now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id's random part
        os.write(write_end, new_id("t").encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read_end, 200).decode()
    os.close(read_end)
    os.close(write_end)
    assert random_part(child) != random_part(new_id("t"))
