"""Tests of the write-ahead log: format, recovery, group commit, truncation, readers."""

from __future__ import annotations

import os
import struct
import threading
import zlib

import numpy as np
import pytest

from simplevector.engine.errors import (
    ClosedError,
    CorruptionError,
    InvalidInput,
    ReadOnlyError,
    StorageError,
)
from simplevector.engine.wal import WriteAheadLog

HEADER = struct.Struct("<5sBQ")
FRAME = struct.Struct("<IIQB")


def build_frame(lsn: int, payload: bytes, flags: int = 0) -> bytes:
    """A frame built from the documented format, independently of wal.py."""
    body = struct.pack("<QB", lsn, flags) + payload
    return struct.pack("<II", len(body), zlib.crc32(body)) + body


def flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def payload_for(lsn: int, size: int = 64) -> bytes:
    return (f"record-{lsn}-".encode() * (size // 8 + 1))[:size]


def fill(wal: WriteAheadLog, lsns, size: int = 64) -> list[int]:
    """Append one record per LSN; return their end offsets."""
    return [wal.append(lsn, payload_for(lsn, size)) for lsn in lsns]


def test_round_trip_of_raw_and_compressed_payloads(tmp_path):
    rng = np.random.default_rng(0)
    payloads = {
        1: b"",
        2: b"small",
        3: b"compressible " * 1000,  # above compress_above: stored compressed
        4: rng.bytes(10_000),  # above compress_above, incompressible: stored raw
        5: rng.standard_normal((1000, 128)).astype(np.float32).tobytes(),  # ~512 KB vectors
    }
    with WriteAheadLog(tmp_path / "wal") as wal:
        ends = {lsn: wal.append(lsn, p) for lsn, p in payloads.items()}
        wal.sync(5)
        assert list(wal.iter_records()) == list(payloads.items())
        assert [lsn for lsn, _ in wal.iter_records(since_lsn=2, upto_lsn=4)] == [3, 4]
        (path, first), = wal.segments()
    assert first == 1
    data = open(path, "rb").read()
    starts = {1: HEADER.size, **{lsn: ends[lsn - 1] for lsn in range(2, 6)}}
    flags = {lsn: data[starts[lsn] + 16] for lsn in payloads}
    assert flags == {1: 0, 2: 0, 3: 1, 4: 0, 5: 0}
    assert ends[3] - starts[3] < len(payloads[3]) // 10
    with WriteAheadLog(tmp_path / "wal", readonly=True) as ro:
        assert dict(ro.iter_records()) == payloads


def test_on_disk_format_is_header_then_documented_frames(tmp_path):
    with WriteAheadLog(tmp_path / "wal") as wal:
        wal.append(7, b"hello")
        wal.append(9, b"world!")
    path = tmp_path / "wal" / f"{7:020d}.wal"
    data = path.read_bytes()
    assert HEADER.unpack_from(data, 0) == (b"SVWAL", 1, 7)
    assert data[HEADER.size :] == build_frame(7, b"hello") + build_frame(9, b"world!")


def test_reopen_finds_last_lsn_and_appending_continues(tmp_path):
    with WriteAheadLog(tmp_path / "wal") as wal:
        assert (wal.last_lsn, wal.first_lsn) == (0, None)
        fill(wal, range(1, 21))
    wal = WriteAheadLog.open(tmp_path / "wal")
    assert (wal.last_lsn, wal.first_lsn, wal.synced_lsn) == (20, 1, 20)
    with pytest.raises(InvalidInput, match="20"):
        wal.append(20, b"again")
    wal.append(25, b"next")
    wal.sync(25)
    wal.close()
    with WriteAheadLog(tmp_path / "wal", readonly=True) as ro:
        assert ro.last_lsn == 25
        assert [lsn for lsn, _ in ro.iter_records(since_lsn=18)] == [19, 20, 25]


def test_segment_rollover_and_iteration_across_segments(tmp_path):
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1024) as wal:
        fill(wal, range(1, 61), size=200)
        segs = wal.segments()
        assert len(segs) >= 10
        assert sorted(os.listdir(tmp_path / "wal")) == [os.path.basename(p) for p, _ in segs]
        for path, first in segs:
            assert os.path.basename(path) == f"{first:020d}.wal"
            assert os.path.getsize(path) <= 1024
            assert HEADER.unpack(open(path, "rb").read(HEADER.size)) == (b"SVWAL", 1, first)
        assert wal.size_bytes() == sum(os.path.getsize(p) for p, _ in segs)
        assert wal.sync_count >= len(segs) - 1  # each rolled-over segment was synced
        records = list(wal.iter_records())
        assert records == [(lsn, payload_for(lsn, 200)) for lsn in range(1, 61)]
        window = wal.iter_records(since_lsn=33, upto_lsn=41)
        assert [lsn for lsn, _ in window] == list(range(34, 42))
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1024) as wal:
        assert (wal.first_lsn, wal.last_lsn) == (1, 60)
        want = [(n, payload_for(n, 200)) for n in range(56, 61)]
        assert list(wal.iter_records(since_lsn=55)) == want


def test_record_cut_mid_frame_recovers_to_last_whole_record(tmp_path):
    with WriteAheadLog(tmp_path / "wal") as wal:
        ends = fill(wal, range(1, 11))
        (path, _), = wal.segments()
    os.truncate(path, ends[-1] - 30)  # the last frame is torn inside its payload
    with WriteAheadLog(tmp_path / "wal") as wal:
        assert wal.last_lsn == 9
        assert os.path.getsize(path) == ends[8]
        wal.append(10, b"rewritten")
        wal.sync(10)
    os.truncate(path, ends[8] + 5)  # now torn inside the frame header
    with WriteAheadLog(tmp_path / "wal") as wal:
        assert wal.last_lsn == 9
        wal.append(10, b"second try")
        assert list(wal.iter_records(since_lsn=8)) == [(9, payload_for(9)), (10, b"second try")]


def test_flipped_byte_in_last_record_is_cut_by_writer_and_ignored_by_reader(tmp_path):
    with WriteAheadLog(tmp_path / "wal") as wal:
        ends = fill(wal, range(1, 11))
        (path, _), = wal.segments()
    flip_byte(path, ends[-1] - 3)
    with WriteAheadLog(tmp_path / "wal", readonly=True) as ro:
        assert ro.last_lsn == 9
        assert [lsn for lsn, _ in ro.iter_records()] == list(range(1, 10))
    assert os.path.getsize(path) == ends[-1]  # the reader changed nothing
    with WriteAheadLog(tmp_path / "wal") as wal:
        assert wal.last_lsn == 9
        assert os.path.getsize(path) == ends[8]
        wal.append(10, b"ten")
        assert [lsn for lsn, _ in wal.iter_records()] == list(range(1, 11))


def test_flipped_byte_in_older_record_raises_naming_file_and_offset(tmp_path):
    with WriteAheadLog(tmp_path / "wal") as wal:
        ends = fill(wal, range(1, 11))
        (path, _), = wal.segments()
    flip_byte(path, ends[4] - 3)  # payload of record 5, which starts at ends[3]
    for readonly in (False, True):
        with pytest.raises(CorruptionError) as info:
            WriteAheadLog(tmp_path / "wal", readonly=readonly)
        message = str(info.value)
        assert path in message and f"offset {ends[3]} " in message
        assert "checksum" in message and "not a torn tail" in message
    assert os.path.getsize(path) == ends[-1]  # nothing was cut


def test_corrupt_length_field_in_middle_is_not_mistaken_for_a_torn_tail(tmp_path):
    with WriteAheadLog(tmp_path / "wal") as wal:
        ends = fill(wal, range(1, 11))
        (path, _), = wal.segments()
    flip_byte(path, ends[4] + 3)  # high byte of record 6's length: it now runs past EOF
    with pytest.raises(CorruptionError, match=f"offset {ends[4]} is incomplete"):
        WriteAheadLog(tmp_path / "wal")
    assert os.path.getsize(path) == ends[-1]


def test_corruption_in_non_last_segment_raises(tmp_path):
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1024) as wal:
        fill(wal, range(1, 31), size=200)
        segs = wal.segments()
    first_path, second_path = segs[0][0], segs[1][0]
    size = os.path.getsize(first_path)
    flip_byte(first_path, size - 2)  # the last record of a non-last segment
    with pytest.raises(CorruptionError, match="not a torn tail") as info:
        WriteAheadLog(tmp_path / "wal", segment_bytes=1024)
    assert first_path in str(info.value) and second_path in str(info.value)
    flip_byte(first_path, size - 2)  # repair, then tear the same segment's tail instead
    WriteAheadLog(tmp_path / "wal", readonly=True).close()
    os.truncate(first_path, size - 2)
    with pytest.raises(CorruptionError, match="incomplete"):
        WriteAheadLog(tmp_path / "wal", segment_bytes=1024)


def test_lsn_that_does_not_increase_is_corruption(tmp_path):
    with WriteAheadLog(tmp_path / "wal") as wal:
        fill(wal, range(1, 6))
        (path, _), = wal.segments()
    with open(path, "ab") as f:
        f.write(build_frame(3, b"out of order"))  # a valid frame, but LSN 3 again
    with pytest.raises(CorruptionError, match="LSN 3, not above the previous LSN 5"):
        WriteAheadLog(tmp_path / "wal")


def test_group_commit_shares_fdatasync_between_threads(tmp_path):
    wal = WriteAheadLog(tmp_path / "wal", segment_bytes=16 << 10)
    threads_n, per_thread = 8, 50
    next_lsn = [0]
    lsn_lock = threading.Lock()
    start = threading.Barrier(threads_n)
    round_barrier = threading.Barrier(threads_n)  # all append, then all sync: one sync covers many
    durable_at_return = []
    errors = []

    def worker(tid):
        try:
            start.wait()
            for i in range(per_thread):
                with lsn_lock:  # LSNs are handed out and appended in order
                    next_lsn[0] += 1
                    lsn = next_lsn[0]
                    wal.append(lsn, b"t%d-%d" % (tid, i))
                round_barrier.wait()
                wal.sync(lsn)
                durable_at_return.append(wal.synced_lsn >= lsn)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    total = threads_n * per_thread
    assert len(durable_at_return) == total and all(durable_at_return)
    assert wal.synced_lsn == wal.last_lsn == total
    assert wal.sync_count < total
    wal.close()
    with WriteAheadLog(tmp_path / "wal", readonly=True) as ro:
        records = list(ro.iter_records())
    assert [lsn for lsn, _ in records] == list(range(1, total + 1))
    assert sorted(p for _, p in records) == sorted(
        b"t%d-%d" % (t, i) for t in range(threads_n) for i in range(per_thread)
    )


def test_concurrent_append_and_sync_without_coordination_is_durable_and_ordered(tmp_path):
    wal = WriteAheadLog(tmp_path / "wal", segment_bytes=8 << 10)
    next_lsn = [0]
    lsn_lock = threading.Lock()

    def worker():
        for _ in range(50):
            with lsn_lock:
                next_lsn[0] += 1
                lsn = next_lsn[0]
                wal.append(lsn, payload_for(lsn, 100))
            wal.sync(lsn)
            assert wal.synced_lsn >= lsn

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wal.synced_lsn == 400 and wal.sync_count <= 400
    assert list(wal.iter_records()) == [(n, payload_for(n, 100)) for n in range(1, 401)]
    wal.close()


def test_truncate_before_removes_only_fully_covered_old_segments(tmp_path):
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1024) as wal:
        fill(wal, range(1, 41), size=200)
        segs = wal.segments()
        firsts = [first for _, first in segs]
        assert len(segs) >= 5
        assert wal.truncate_before(firsts[1] - 1) == 0  # LSN firsts[1]-1 is still needed
        assert wal.truncate_before(firsts[1]) == 1
        assert not os.path.exists(segs[0][0])
        assert wal.first_lsn == firsts[1]
        assert wal.truncate_before(firsts[3] + 1) == 2  # segs[3] holds firsts[3] itself: kept
        assert wal.first_lsn == firsts[3]
        assert wal.truncate_before(10**9) == len(segs) - 4  # never the active segment
        assert wal.segments() == segs[-1:]
        assert [lsn for lsn, _ in wal.iter_records()] == list(range(firsts[-1], 41))
        wal.append(41, b"still appending")
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1024) as wal:
        assert (wal.first_lsn, wal.last_lsn) == (firsts[-1], 41)


def test_readonly_instance_iterates_while_writer_appends(tmp_path):
    writer = WriteAheadLog(tmp_path / "wal", segment_bytes=2048)
    fill(writer, range(1, 11), size=150)
    reader = WriteAheadLog(tmp_path / "wal", readonly=True)
    assert reader.last_lsn == 10
    with pytest.raises(ReadOnlyError):
        reader.append(11, b"nope")
    seen: list[tuple[int, bytes]] = list(reader.iter_records())
    done = threading.Event()

    def write_more():
        for lsn in range(11, 401):
            writer.append(lsn, payload_for(lsn, 150))
            if lsn % 25 == 0:
                writer.sync(lsn)
        done.set()

    t = threading.Thread(target=write_more)
    t.start()
    while True:  # tail the log the way a follower would
        finished = done.is_set()
        since = seen[-1][0] if seen else 0
        seen.extend(reader.iter_records(since_lsn=since))
        if finished:
            break
    t.join()
    assert [lsn for lsn, _ in seen] == list(range(1, 401))
    assert all(p == payload_for(lsn, 150) for lsn, p in seen)
    assert reader.last_lsn == 400
    assert len(reader.segments()) > 1
    writer.close()
    reader.close()


def test_open_iterator_follows_writer_through_a_rollover(tmp_path):
    writer = WriteAheadLog(tmp_path / "wal", segment_bytes=1024)
    fill(writer, range(1, 4), size=100)
    with WriteAheadLog(tmp_path / "wal", readonly=True) as reader:
        it = reader.iter_records()
        assert next(it)[0] == 1  # the reader has sized up segment one: records 1..3
        fill(writer, range(4, 31), size=100)  # more in segment one, then new segments
        assert len(writer.segments()) > 2
        assert [lsn for lsn, _ in it] == list(range(2, 31))
    writer.close()


def test_readonly_stops_quietly_at_incomplete_tail_frame_and_changes_nothing(tmp_path):
    with WriteAheadLog(tmp_path / "wal") as wal:
        fill(wal, range(1, 6))
        (path, _), = wal.segments()
    with open(path, "ab") as f:
        f.write(build_frame(6, b"half written frame")[:20])
    size = os.path.getsize(path)
    with WriteAheadLog(tmp_path / "wal", readonly=True) as ro:
        assert ro.last_lsn == 5
        assert [lsn for lsn, _ in ro.iter_records()] == [1, 2, 3, 4, 5]
    assert os.path.getsize(path) == size
    with open(path, "ab") as f:  # the writer finishes the frame: the reader now sees it
        f.write(build_frame(6, b"half written frame")[20:])
    with WriteAheadLog(tmp_path / "wal", readonly=True) as ro:
        assert list(ro.iter_records(since_lsn=5)) == [(6, b"half written frame")]


def test_empty_last_segment_left_by_a_crash_is_removed(tmp_path):
    with WriteAheadLog(tmp_path / "wal") as wal:
        fill(wal, range(1, 4))
    empty = tmp_path / "wal" / f"{9:020d}.wal"
    empty.write_bytes(HEADER.pack(b"SVWAL", 1, 9))  # created, but its record never landed
    with WriteAheadLog(tmp_path / "wal") as wal:
        assert wal.last_lsn == 3
        assert not empty.exists()
        wal.append(4, b"four")  # below the removed segment's name: must still be valid
    with WriteAheadLog(tmp_path / "wal") as wal:
        assert [lsn for lsn, _ in wal.iter_records()] == [1, 2, 3, 4]


def test_use_after_close_raises_closed_error(tmp_path):
    wal = WriteAheadLog(tmp_path / "wal")
    wal.append(1, b"one")
    wal.close()
    wal.close()  # idempotent
    assert wal.closed and wal.synced_lsn == 1
    for call in (
        lambda: wal.append(2, b"two"),
        lambda: wal.sync(1),
        lambda: wal.iter_records(),
        lambda: wal.truncate_before(1),
        lambda: wal.segments(),
        lambda: wal.size_bytes(),
        lambda: wal.first_lsn,
    ):
        with pytest.raises(ClosedError):
            call()
    with WriteAheadLog(tmp_path / "wal") as again:
        assert list(again.iter_records()) == [(1, b"one")]


def test_stray_tmp_files_are_swept_by_writer_only(tmp_path):
    with WriteAheadLog(tmp_path / "wal") as wal:
        fill(wal, range(1, 4))
    stray = tmp_path / "wal" / f"{4:020d}.wal.tmp"
    stray.write_bytes(b"SVWAL partial")
    WriteAheadLog(tmp_path / "wal", readonly=True).close()
    assert stray.exists()
    with WriteAheadLog(tmp_path / "wal") as wal:
        assert not stray.exists()
        assert wal.last_lsn == 3


def test_os_error_on_append_is_storage_error_and_stops_further_writes(tmp_path):
    wal = WriteAheadLog(tmp_path / "wal")
    wal.append(1, b"one")
    (path, _), = wal.segments()
    os.close(wal._fd)  # the device fails under the log: every call on the fd now errors
    with pytest.raises(StorageError, match=path) as info:
        wal.append(2, b"two")
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(StorageError, match="refuses writes"):
        wal.append(3, b"three")
    wal.close()
    with WriteAheadLog(tmp_path / "wal") as again:
        assert list(again.iter_records()) == [(1, b"one")]


def test_bad_arguments_are_invalid_input(tmp_path):
    with WriteAheadLog(tmp_path / "wal") as wal:
        for lsn in (0, -1, True, 1.5, 1 << 64):
            with pytest.raises(InvalidInput):
                wal.append(lsn, b"x")
        with pytest.raises(InvalidInput):
            wal.append(1, "not bytes")
        assert wal.last_lsn == 0
    with pytest.raises(InvalidInput):
        WriteAheadLog(tmp_path / "other", segment_bytes=10)


def test_scan_from_reads_only_headers_below_it_and_check_reads_everything(tmp_path):
    """Recovery with ``scan_from`` (the engine's checkpoint LSN) skips the frames of sealed
    segments wholly at or below it; damage there is found by check() and by reading them,
    never by the open; damage above it still fails the open."""
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1024) as wal:
        fill(wal, range(1, 41), size=200)
        segs = wal.segments()
    assert len(segs) >= 6
    first_path = segs[0][0]
    size = os.path.getsize(first_path)
    flip_byte(first_path, size - 2)             # damage LSNs below segs[1]'s first
    below = segs[1][1] - 1
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1024, scan_from=below) as wal:
        assert wal.last_lsn == 40               # opened: the damaged frames were not read
        with pytest.raises(CorruptionError, match=os.path.basename(first_path)):
            wal.check()
        with pytest.raises(CorruptionError):
            list(wal.iter_records(0))
        assert [lsn for lsn, _ in wal.iter_records(below)] == list(range(below + 1, 41))
        wal.append(41, b"after")                # the writer continues where it was
    with pytest.raises(CorruptionError, match="not a torn tail"):
        WriteAheadLog(tmp_path / "wal", segment_bytes=1024, scan_from=below - 1)
    with pytest.raises(CorruptionError):
        WriteAheadLog(tmp_path / "wal", segment_bytes=1024)    # scan_from=0: all of it
    flip_byte(first_path, size - 2)             # repaired: check() reads every segment
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1024) as wal:
        assert wal.check() == len(wal.segments())
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(InvalidInput, match="scan_from"):
            WriteAheadLog(tmp_path / "wal", scan_from=bad)


def test_scan_from_never_skips_the_segment_before_an_empty_last_one(tmp_path):
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1024) as wal:
        fill(wal, range(1, 21), size=200)
        last = wal.segments()[-1]
    empty = tmp_path / "wal" / f"{21:020d}.wal"
    empty.write_bytes(HEADER.pack(b"SVWAL", 1, 21))
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1024, scan_from=20) as wal:
        assert not empty.exists() and wal.segments()[-1] == last
        wal.append(21, b"next")
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1024) as wal:
        assert [lsn for lsn, _ in wal.iter_records(18)] == [19, 20, 21]
