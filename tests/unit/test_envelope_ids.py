"""Envelope ids: random, unique across threads and refills of the random pool, and
never shared with a forked child; path validation caches only valid paths."""

from __future__ import annotations

import os
import re
import threading

import pytest

from cellplane.errors import InvalidArgument
from cellplane.federation import envelopes, paths

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def test_ids_are_unique_128_bit_hex_across_threads_and_refills() -> None:
    drawn: list[list[str]] = [[] for _ in range(4)]

    def draw(into: list[str]) -> None:
        into.extend(envelopes.new_id() for _ in range(3000))  # several pool refills

    threads = [threading.Thread(target=draw, args=(ids,)) for ids in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for ids in drawn for i in ids]
    assert len(set(every)) == len(every) == 12000
    assert all(HEX_ID.match(i) for i in every)


def test_a_forked_child_draws_ids_its_parent_never_will() -> None:
    envelopes.new_id()  # the pool now holds ids the parent will hand out next
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        os.write(write_end, " ".join(envelopes.new_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {envelopes.new_id() for _ in range(50)}
    assert len(child) == 50
    assert not child & parent


def test_an_invalid_path_is_refused_every_time() -> None:
    assert paths.validate("api!eu!eu-a") == "api!eu!eu-a"
    for _ in range(2):
        with pytest.raises(InvalidArgument):
            paths.validate("api!EU")
        with pytest.raises(InvalidArgument):
            paths.validate("")
