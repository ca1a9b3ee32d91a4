"""Data/hole map of sparse memory files, at page and huge-page granularity."""

from __future__ import annotations

import os
from pathlib import Path

from firecracer.uffd.memfile import MemoryFile

PS = 4096


def _sparse(path: Path, pages: int, data: list[int]) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(pages * PS)
        for p in data:
            fh.seek(p * PS)
            fh.write(b"\x01" * PS)
    return path


def test_split_and_has_data(tmp_path: Path) -> None:
    path = _sparse(tmp_path / "m", 64, [0, 1, 2, 10, 63])
    with MemoryFile(path) as mem:
        if mem.dense:  # a file system without holes: everything is data, nothing to check
            return
        assert mem.has_data(0, PS) and not mem.has_data(3 * PS, PS) and mem.has_data(63 * PS, PS)
        assert mem.has_data(8 * PS, 4 * PS) and not mem.has_data(11 * PS, 52 * PS)
        assert mem.split(0, 16 * PS) == [(0, 3 * PS, True), (3 * PS, 7 * PS, False), (10 * PS, PS, True),
                                         (11 * PS, 5 * PS, False)]
        # 8-page units: a unit with any data is data
        assert mem.split(0, 64 * PS, 8 * PS) == [(0, 16 * PS, True), (16 * PS, 40 * PS, False),
                                                  (56 * PS, 8 * PS, True)]
        assert mem.data_bytes == 5 * PS


def test_dense_file(tmp_path: Path) -> None:
    path = tmp_path / "d"
    path.write_bytes(os.urandom(8 * PS))
    with MemoryFile(path) as mem:
        assert mem.dense and mem.split(PS, 2 * PS) == [(PS, 2 * PS, True)]
