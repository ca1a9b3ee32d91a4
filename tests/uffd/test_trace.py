"""trace.npz round trip, validation, and the seed log formats (old without tid, new with tid)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from firecracer.errors import FormatError
from firecracer.uffd.trace import (
    FLAG_FAULTING,
    FLAG_WRITE,
    FLAG_ZERO,
    Action,
    Trace,
    export_seed_log,
    import_seed_log,
    load_trace,
    make_trace,
    save_trace,
    seed_log_lines,
)

GiB = 1 << 30


def _trace(n: int = 5) -> Trace:
    file_off = np.array([0x3000, 0x1000, 0x3000, 3 * GiB, 0x2000][:n], dtype=np.uint64)
    cols = {
        "t_ns": np.arange(n) * 1000,
        "hva": 0x7F0000000000 + file_off,
        "file_off": file_off,
        "gpa": np.where(file_off >= 3 * GiB, file_off + GiB, file_off),
        "flags": np.array([FLAG_FAULTING | FLAG_WRITE, FLAG_FAULTING, FLAG_FAULTING,
                           FLAG_FAULTING | FLAG_ZERO, 0][:n]),
        "action": np.array([Action.LOAD, Action.LOAD, Action.LOAD, Action.ZERO, Action.AROUND][:n]),
        "fault": np.array([0, 1, 2, 3, -1][:n]),
        "service_ns": np.full(n, 50_000),
    }
    return make_trace(cols, {"strategy": "ondemand", "page_size": 4096,
                             "removes": [{"t_ns": 1, "start": 0x7F0000005000, "end": 0x7F0000007000}]})


def test_roundtrip_keeps_columns_dtypes_and_meta(tmp_path: Path) -> None:
    tr = _trace()
    path = save_trace(tr, tmp_path / "trace.npz")
    back = load_trace(path)
    assert len(back) == 5
    assert back.meta["format"] == "firecracer-trace" and back.meta["version"] == 1
    assert back.strategy == "ondemand" and back.page_size == 4096
    assert back.t_ns.dtype == np.uint64 and back.flags.dtype == np.uint8 and back.fault.dtype == np.int32
    assert back.service_ns.dtype == np.uint32
    assert back.gpa[3] == 4 * GiB
    assert back.working_set().tolist() == [0x3000, 0x1000, 3 * GiB]
    assert back.action_counts() == {"load": 3, "zero": 1, "prefetch": 0, "around": 1, "eager": 0}
    # plain numpy can read it too (the contract other stages rely on)
    with np.load(path) as npz:
        assert json.loads(bytes(npz["meta"]).decode())["strategy"] == "ondemand"


@pytest.mark.parametrize("breakage, why", [
    ("nometa", "no 'meta'"), ("format", "format is"), ("column", "missing column 'gpa'"),
    ("length", "differ in length"), ("garbage", "cannot read trace"),
])
def test_load_rejects_malformed(tmp_path: Path, breakage: str, why: str) -> None:
    path = tmp_path / "t.npz"
    tr = _trace()
    arrays = {**tr.columns(), "meta": np.frombuffer(json.dumps(tr.meta).encode(), np.uint8)}
    if breakage == "nometa":
        del arrays["meta"]
    elif breakage == "format":
        arrays["meta"] = np.frombuffer(json.dumps({"format": "x", "version": 1}).encode(), np.uint8)
    elif breakage == "column":
        del arrays["gpa"]
    elif breakage == "length":
        arrays["hva"] = arrays["hva"][:2]
    if breakage == "garbage":
        path.write_bytes(b"not a zip at all")
    else:
        np.savez(path, **arrays)
    with pytest.raises(FormatError, match=why) as info:
        load_trace(path)
    assert str(path) in str(info.value)


def test_export_old_format_is_what_the_visualizer_splits(tmp_path: Path) -> None:
    lines = list(seed_log_lines(_trace()))
    assert lines[0] == ("UFFD_EVENT_PAGEFAULT (w): 0x00007f0000003000 0x00007f0000003000  "
                        "Loading: 0x0000000000003000 - 0x0000000000004000")
    # UffdVisualizer: split on " +", f[1] == "(w):", f[4] is the action, f[5][2:18] the guest address
    f = lines[3].split()
    assert f[1] == "(r):" and f[4] == "Zeroing:" and int(f[5][2:18], 16) == 4 * GiB
    assert lines[-1] == "UFFD_EVENT_REMOVE: 0x00007f0000005000 - 0x00007f0000007000"
    new = list(seed_log_lines(_trace(), with_tid=True))
    assert new[1] == ("UFFD_EVENT_PAGEFAULT (r): 0 0x00007f0000001000 0x00007f0000001000 "
                      "Loading: 0x0000000000001000 - 0x0000000000002000")


@pytest.mark.parametrize("with_tid", [False, True])
def test_import_both_seed_formats_roundtrip(tmp_path: Path, with_tid: bool) -> None:
    tr = _trace(4)
    log = export_seed_log(tr, tmp_path / "uffd.log", with_tid=with_tid, address="file_off")
    text = log.read_text()
    log.write_text("Mapping memory file /x to address 0x1 - 0x2, size = 8589934592\n"
                   "Create MemRegions for mapping GuestRegionUffdMapping { "
                   "base_host_virt_addr: 139637976727552, size: 8589934592, offset: 0 }\n"
                   "Connected to PID 42\n" + text)
    back = import_seed_log(log)
    assert back.meta["seed_format"] == ("with-tid" if with_tid else "old")
    assert back.file_off.tolist() == tr.file_off.tolist()
    assert back.gpa.tolist() == tr.gpa.tolist()
    assert back.hva.tolist() == tr.hva.tolist()
    assert ((back.flags & FLAG_WRITE) != 0).tolist() == [True, False, False, False]
    assert back.action.tolist() == [0, 0, 0, 1]
    assert back.meta["regions"][0]["size"] == 8 * GiB
    assert back.meta["removes"][0]["start"] == 0x7F0000005000


def test_import_names_the_bad_line(tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    log.write_text("Connected to PID 1\nUFFD_EVENT_PAGEFAULT (r): 0xzz\n")
    with pytest.raises(FormatError, match=r"bad.log:2: malformed UFFD_EVENT_PAGEFAULT"):
        import_seed_log(log)


def test_npz_is_a_zip_of_npy(tmp_path: Path) -> None:
    path = save_trace(_trace(), tmp_path / "t.npz")
    with zipfile.ZipFile(path) as zf:
        assert {"t_ns.npy", "meta.npy", "service_ns.npy"} <= set(zf.namelist())
