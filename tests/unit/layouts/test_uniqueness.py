"""Uniqueness in fixed memory: the Bloom filter, the suspects and the second read are exact (SPEC §2)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kei_gateway.layouts import (
    JNKS_PAYMENTS, MPN_SLIPS, Layout, ValidationOptions, ValidationReport, Validator, generate_file, validate_bytes,
    validate_stream,
)
from kei_gateway.layouts._keyfilter import KeyFilter, KeyLog, MemoryScratch, SpilledLog, fingerprint, lane_width
from kei_gateway.layouts import validator as validator_module
from kei_gateway.layouts.uniqueness import ExactKeys, FilteredKeys, SuspectSet

from .helpers import OPTIONS, TODAY

SIZE = JNKS_PAYMENTS.record_length
TINY = 6
"""A 64-bit filter: nearly every key is a suspect, so the second read does all the work."""


def repeated(log: KeyLog | SpilledLog) -> set[int]:
    """Every fingerprint the log found repeated, as one set (the log gives sorted arrays)."""
    return {int(value) for found in log.repeated() for value in found.tolist()}


def exact(data: bytes, layout: Layout, options: ValidationOptions = OPTIONS, *,
          fast_path: bool = True) -> ValidationReport:
    """The reference: every key kept in memory (the behaviour before the filter)."""
    validator = Validator(layout, options, fast_path=fast_path)
    validator.feed(data)
    return validator.close()


def summary(report: ValidationReport) -> tuple[object, ...]:
    return (report.valid, report.records, report.error_count, report.gaiji_substituted,
            [(e.record, e.offset, e.key, e.message(full_values=True)) for e in report.errors])


def with_duplicates(records: list[bytes], layout: Layout, pairs: list[tuple[int, int]]) -> bytes:
    """Copy the unique fields of record ``source`` over record ``target`` for each pair."""
    out = list(records)
    for source, target in pairs:
        record = bytearray(out[target])
        for key in layout.unique_keys or ():
            start, end = layout.offsets[key], layout.offsets[key] + layout[key].width
            record[start:end] = out[source][start:end]
        out[target] = bytes(record)
    return b"".join(out)


@pytest.mark.parametrize("layout", [JNKS_PAYMENTS, MPN_SLIPS], ids=lambda layout: layout.name)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_when_the_filter_is_tiny_then_many_false_suspects_arise_and_the_result_is_still_the_exact_one(
        layout: Layout, data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 60))
    seed = data.draw(st.integers(0, 10_000))
    invalid_rate = data.draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))
    records = list(generate_file(layout, count, seed=seed, today=TODAY, invalid_rate=invalid_rate))
    pairs = data.draw(st.lists(st.tuples(st.integers(0, count - 1), st.integers(0, count - 1)), max_size=5))
    file = with_duplicates(records, layout, pairs)
    # Structural damage too (bare LF, a split or merged line, a BOM): record numbers must still line up.
    for position, damage in data.draw(st.lists(st.tuples(st.integers(0, len(file) - 1),
                                                         st.sampled_from([b"", b"\n", b"\r", b"X"])), max_size=3)):
        file = file[:position] + damage + file[position + 1:]
    if data.draw(st.booleans()) and data.draw(st.booleans()):
        file = b"\xef\xbb\xbf" + file
    utf8 = data.draw(st.booleans())
    options = OPTIONS
    if utf8:
        file = file.decode("cp932", errors="replace").encode("utf-8")
        options = dataclasses.replace(options, encoding="utf-8")
    options = dataclasses.replace(options, max_errors=data.draw(st.sampled_from([1, 3, 1000])))
    block_size = data.draw(st.sampled_from([1 << 9, 1 << 11, 1 << 18]))  # small blocks: many fast-path blocks
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validator_module, "_BLOCK_SIZE", block_size)
        for fast_path in (True, False):
            reference = exact(file, layout, options, fast_path=fast_path)
            assert summary(validate_bytes(file, layout, options, fast_path=fast_path, filter_bits_log2=TINY)) \
                == summary(reference)
            assert summary(validate_bytes(file, layout, options, fast_path=fast_path)) == summary(reference)


def test_when_the_filter_is_tiny_then_the_first_read_leaves_suspects_and_a_rescan_is_needed() -> None:
    data = b"".join(generate_file(JNKS_PAYMENTS, 200, seed=3, today=TODAY))
    # Record by record: in one fast-path block the keys are only compared among themselves (all distinct here).
    validator = Validator(JNKS_PAYMENTS, OPTIONS, rereadable=True, filter_bits_log2=TINY, fast_path=False)
    validator.feed(data)
    report = validator.close()
    assert validator.needs_rescan and not report.valid and report.uniqueness_pending
    assert validator.rescan([data]).valid and not validator.needs_rescan


def test_when_duplicates_sit_inside_one_block_and_across_blocks_then_each_is_reported_at_the_later_record() -> None:
    records = list(generate_file(JNKS_PAYMENTS, 9000, seed=5, today=TODAY))
    # Records 11 → 21 inside the first block; record 2 → 8000 several blocks later (a block is ~3,700 records).
    data = with_duplicates(records, JNKS_PAYMENTS, [(10, 20), (1, 7999)])
    first = JNKS_PAYMENTS["chassis_no"]
    for bits in (TINY, 27):
        for fast_path in (True, False):
            report = validate_bytes(data, JNKS_PAYMENTS, OPTIONS, fast_path=fast_path, filter_bits_log2=bits)
            assert [(e.record, e.key, e.field_name, e.offset) for e in report.errors] == [
                (21, "chassis_no", first.name, 20 * SIZE + JNKS_PAYMENTS.offsets["chassis_no"]),
                (8000, "chassis_no", first.name, 7999 * SIZE + JNKS_PAYMENTS.offsets["chassis_no"]),
            ]
            assert all("repeats the (chassis_no, tax_year) of an earlier record" in e.reason for e in report.errors)
            assert summary(report) == summary(exact(data, JNKS_PAYMENTS, fast_path=fast_path))


def test_when_a_unique_file_has_keys_that_share_fingerprint_lanes_then_it_is_never_rejected() -> None:
    records = list(generate_file(JNKS_PAYMENTS, 3000, seed=9, today=TODAY))
    data = b"".join(records)
    assert validate_bytes(data, JNKS_PAYMENTS, OPTIONS, filter_bits_log2=TINY).valid
    assert validate_bytes(data, JNKS_PAYMENTS, OPTIONS, filter_bits_log2=TINY, fast_path=False).valid


def one_shot(data: bytes) -> Iterator[bytes]:
    yield data


def test_when_the_input_cannot_be_read_again_then_every_key_is_kept_exactly_in_memory() -> None:
    records = list(generate_file(JNKS_PAYMENTS, 50, seed=1, today=TODAY))
    data = with_duplicates(records, JNKS_PAYMENTS, [(3, 40)])
    validator = Validator(JNKS_PAYMENTS, OPTIONS)  # what validate_stream does without reread (stdin)
    assert isinstance(validator._unique, ExactKeys)
    validator.feed(data)
    report = validator.close()
    assert not validator.needs_rescan
    assert [(e.record, e.key) for e in report.errors] == [(41, "chassis_no")]
    assert len(validator._unique.seen) == 49
    stream_report = validate_stream(one_shot(data), JNKS_PAYMENTS, OPTIONS)
    assert summary(stream_report) == summary(report)


def test_when_the_file_changes_between_the_two_reads_then_rescan_refuses() -> None:
    records = list(generate_file(JNKS_PAYMENTS, 50, seed=1, today=TODAY))
    data = b"".join(records)
    validator = Validator(JNKS_PAYMENTS, OPTIONS, rereadable=True, filter_bits_log2=TINY, fast_path=False)
    validator.feed(data)
    validator.close()
    assert validator.needs_rescan
    with pytest.raises(ValueError, match="changed"):
        validator.rescan([data[:-70] + records[0]])


def large_unique_file(copies: int, block_records: int = 2000) -> Iterator[bytes]:
    """Distinct valid JNKS records, fast: one generated block repeated with the chassis serial's high digits changed."""
    block = bytearray(b"".join(generate_file(JNKS_PAYMENTS, block_records, seed=42, today=TODAY)))
    serial_high = JNKS_PAYMENTS.offsets["chassis_no"] + 6  # "DMYnn-" then a 12-digit serial, high digits zero
    for position in range(6):
        assert set(block[serial_high + position::SIZE]) == {ord("0")}
    for copy in range(copies):
        for position, digit in enumerate(f"{copy:06d}".encode()):
            block[serial_high + position::SIZE] = bytes([digit]) * block_records
        yield bytes(block)


def test_when_a_large_file_is_validated_then_the_uniqueness_structures_stay_bounded() -> None:
    validator = Validator(JNKS_PAYMENTS, OPTIONS, rereadable=True)
    unique = validator._unique
    assert isinstance(unique, FilteredKeys)
    sizes = []
    for number, block in enumerate(large_unique_file(150)):  # 300,000 records, 21 MB
        validator.feed(block)
        if number % 50 == 49:
            sizes.append((unique.filter.nbytes, len(unique.suspects)))
    report = validator.close()
    assert report.valid and report.records == 300_000 and not validator.needs_rescan
    assert all(nbytes == 1 << 24 for nbytes, _ in sizes)  # 16 MiB, whatever the file size
    assert all(suspects <= 10 for _, suspects in sizes)  # expected well under 1 at this size
    assert validator._unique is None  # no suspects: the filter is released at close()


def test_when_a_key_filter_adds_a_block_or_one_key_at_a_time_then_the_same_bits_are_set() -> None:
    rng = random.Random(4)
    keys = [bytes(rng.randrange(0x30, 0x3A) for _ in range(24)) for _ in range(500)]
    lane = lane_width(24)
    in_block = KeyFilter(16, salt=1234)
    in_block.add_block(b"".join(keys), lane)
    one_by_one = KeyFilter(16, salt=1234)
    for key in keys:
        one_by_one.add_one(key)
    assert np.array_equal(in_block.bits, one_by_one.bits)
    assert all(one_by_one.add_one(key) for key in keys)  # everything added is a suspect afterwards


def test_when_a_block_repeats_a_key_then_the_later_copy_is_a_suspect_even_in_an_empty_filter() -> None:
    keys = [b"A" * 22, b"B" * 22, b"A" * 22]
    found = KeyFilter(20).add_block(b"".join(key.ljust(24, b"\x00") for key in keys), 24)
    assert 2 in found.tolist()


def test_when_two_filters_are_made_then_their_salts_differ_so_bits_are_no_fixed_function_of_the_keys() -> None:
    key = b"DMY01-000000000001" + b" " * 2 + b"2025"
    first, second = KeyFilter(20), KeyFilter(20)
    first.add_one(key)
    second.add_one(key)
    assert not np.array_equal(first.bits, second.bits)


def test_when_the_file_size_is_known_then_a_small_file_gets_a_small_log_and_a_large_one_a_16_mib_filter() -> None:
    """A known number of records that fits gets a log of 8 bytes a record (at least 1,024 entries);
    more records (over 2,097,152), or an unknown number, get the Bloom filter (at most 16 MiB)."""
    def index(size: int | None) -> KeyFilter | KeyLog:
        unique = Validator(JNKS_PAYMENTS, OPTIONS, rereadable=True, expected_size=size)._unique
        assert isinstance(unique, FilteredKeys)
        return unique.filter

    small = index(3200 * SIZE)
    assert isinstance(small, KeyLog) and small.nbytes == 3201 * 8  # 3,201 records (the size rounds up)
    assert isinstance(index(0), KeyLog) and index(0).nbytes == 1024 * 8  # the smallest
    million = index(10**6 * SIZE)
    assert isinstance(million, KeyLog) and million.nbytes == (10**6 + 1) * 8  # 8 MB
    for large in (index(3 * 10**6 * SIZE), index(10**9), index(None)):
        assert isinstance(large, KeyFilter) and large.nbytes == 1 << 24


def test_when_keys_go_to_a_log_then_every_repeated_key_in_a_block_one_by_one_or_across_blocks_is_found() -> None:
    rng = random.Random(7)
    keys = [bytes(rng.randrange(0x30, 0x3A) for _ in range(24)) for _ in range(3000)]
    repeats = [keys[5], keys[2999], keys[100]]  # a repeat inside the next block, and of the last key
    second = [bytes(rng.randrange(0x30, 0x3A) for _ in range(24)) for _ in range(997)] + repeats
    lane = lane_width(24)
    for log in (KeyLog(5000, salt=99), KeyLog(5000)):
        assert log.add_block(b"".join(keys), lane).size == 0
        assert log.add_block(b"".join(second), lane).size == 0  # nothing is a suspect before the end
        assert [log.add_one(key) for key in (keys[0], b"9" * 24)] == [False, False]
        assert repeated(log) == {fingerprint(log.salt, key) for key in [*repeats, keys[0]]}
    in_block = KeyLog(100, salt=5)
    in_block.add_block(b"".join([keys[1], keys[2], keys[1], keys[3]] * 20), lane)
    assert repeated(in_block) == {fingerprint(5, key) for key in keys[1:4]}
    one_by_one, block = KeyLog(1500, salt=5), KeyLog(1500, salt=5)
    block.add_block(b"".join(keys[:1500]), lane)
    for key in keys[:1500]:
        one_by_one.add_one(key)
    assert np.array_equal(block.entries, one_by_one.entries)  # the same fingerprints, in the same order
    assert repeated(KeyLog(10)) == set()


def test_when_a_log_gets_more_keys_than_it_was_made_for_then_it_stays_exact_and_bounded() -> None:
    rng = random.Random(8)
    keys = [bytes(rng.randrange(0x30, 0x3A) for _ in range(24)) for _ in range(2000)]
    lane = lane_width(24)
    log = KeyLog(512, largest_bits_log2=18)  # made for 512 keys
    log.add_block(b"".join(keys[:250] + keys[:1]), lane)  # a repeat while the log still has room
    for start in range(250, 2000, 250):
        log.add_block(b"".join(keys[start:start + 250]), lane)
    assert log.overflow is not None and log.nbytes == 512 * 8 + (1 << 16) // 8
    # Every key added again is a suspect: those logged by the sorted log, the later ones by the filter.
    assert set(log.add_block(b"".join(keys[::7]), lane).tolist()) == set(range(len(keys[::7])))
    assert all(log.add_one(key) for key in keys[::13])
    assert fingerprint(log.salt, keys[0]) in repeated(log)  # the repeat inside the log is still found


def test_when_a_large_file_goes_through_a_log_then_nothing_is_suspect() -> None:
    size = 300_000 * SIZE
    validator = Validator(JNKS_PAYMENTS, OPTIONS, rereadable=True, expected_size=size)
    unique = validator._unique
    assert isinstance(unique, FilteredKeys) and isinstance(unique.filter, KeyLog)
    for block in large_unique_file(150):  # 300,000 records, 21 MB
        validator.feed(block)
    report = validator.close()
    assert report.valid and report.records == 300_000 and not validator.needs_rescan
    assert not unique.suspects and unique.filter.nbytes == 300_001 * 8  # 2.4 MB


def test_when_keys_are_spilled_then_the_repeats_are_exactly_those_of_an_in_memory_log() -> None:
    """Small staging and passes force many chunks, partitions and multi-pass partitions."""
    rng = random.Random(11)
    keys = [bytes(rng.randrange(0x30, 0x3A) for _ in range(24)) for _ in range(20_000)]
    keys += [keys[index] for index in rng.sample(range(20_000), 300)] + [keys[7]] * 5
    rng.shuffle(keys)
    lane = lane_width(24)
    packed = b"".join(key.ljust(lane, b"\x00") for key in keys)
    reference = KeyLog(len(keys), salt=21)
    reference.add_block(packed, lane)
    expected = repeated(reference)
    assert len(expected) in (300, 301)  # the sampled repeats, and keys[7] unless it was sampled
    for staging, pass_bytes, records in ((1000, 8 * 1024, len(keys)), (777, 8 * 1024, 10),
                                         (4096, 1 << 20, None), (50_000, 1 << 22, len(keys))):
        scratch = MemoryScratch()
        log = SpilledLog(scratch, records, salt=21, staging=staging, pass_bytes=pass_bytes)
        for start in range(0, len(packed), 3000 * lane):
            assert log.add_block(packed[start:start + 3000 * lane], lane).size == 0  # none before the end
        assert log.add_one(keys[0]) is False
        assert repeated(log) == expected | {fingerprint(21, keys[0])}
        assert scratch.closed  # the scratch is given back once the partitions are read
    spilled = SpilledLog(MemoryScratch(), 20_000, staging=1000, pass_bytes=8 * 1024)
    assert spilled.partitions == 32 and spilled.nbytes == 1000 * 8  # 160 KB of keys, 8 KiB a pass


def test_when_the_file_size_is_over_the_log_and_a_scratch_is_given_then_the_keys_are_spilled() -> None:
    scratches: list[MemoryScratch] = []

    def scratch() -> MemoryScratch:
        scratches.append(MemoryScratch())
        return scratches[-1]

    small = Validator(JNKS_PAYMENTS, OPTIONS, rereadable=True, expected_size=1000 * SIZE, scratch=scratch)._unique
    assert isinstance(small, FilteredKeys) and isinstance(small.filter, KeyLog) and not scratches
    for size in (3 * 10**6 * SIZE, None):
        large = Validator(JNKS_PAYMENTS, OPTIONS, rereadable=True, expected_size=size, scratch=scratch)._unique
        assert isinstance(large, FilteredKeys) and isinstance(large.filter, SpilledLog)
        assert large.filter.nbytes <= 2 << 20  # the staging array: the keys are on the scratch
    assert len(scratches) == 2


@pytest.mark.parametrize("fast_path", [True, False])
def test_when_keys_are_spilled_then_a_file_is_judged_as_the_exact_check_does_in_one_read(fast_path: bool) -> None:
    rng = random.Random(12)
    records = list(generate_file(JNKS_PAYMENTS, 3000, seed=5, today=TODAY))
    pairs = [(rng.randrange(0, 1500), rng.randrange(1500, 3000)) for _ in range(6)]
    for data in (b"".join(records), with_duplicates(records, JNKS_PAYMENTS, pairs)):
        reads = []

        def chunks() -> Iterator[bytes]:
            reads.append(1)
            yield from (data[start:start + 50_000] for start in range(0, len(data), 50_000))

        # No expected size: the spilled log (a tiny one: many chunks and partitions) instead of the in-memory log.
        scratch = MemoryScratch()

        class TinySpill(SpilledLog):
            def __init__(self, scratch: MemoryScratch, records: int | None) -> None:
                super().__init__(scratch, 10, staging=500, pass_bytes=4096)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("kei_gateway.layouts.uniqueness.SpilledLog", TinySpill)
            report = validate_stream(chunks(), JNKS_PAYMENTS, OPTIONS, fast_path=fast_path, reread=chunks,
                                     scratch=lambda: scratch)
        assert summary(report) == summary(exact(data, JNKS_PAYMENTS, fast_path=fast_path))
        assert len(reads) == (1 if report.valid else 2)  # a valid file is read once
        assert scratch.appended == 6 and scratch.closed  # 3,000 keys staged 500 at a time, read back in 6 passes


def test_when_suspects_come_then_the_set_keeps_them_distinct_sorted_and_bounded() -> None:
    suspects = SuspectSet(limit=5000)
    for _ in range(50):
        suspects.add(np.full(1000, 42, dtype=np.uint64))  # one key repeated on every record: one entry
    suspects.add(np.arange(100, 4000, dtype=np.uint64)[::-1].copy())
    assert not suspects.overflowed and len(suspects) == 3901 and 42 in suspects and 43 not in suspects
    assert np.all(np.diff(suspects.array.astype(np.int64)) > 0)
    suspects.add(np.arange(10_000, 12_000, dtype=np.uint64))
    assert suspects.overflowed and len(suspects) == 0 and suspects  # no more kept, and it says so
    suspects.add(np.arange(5, dtype=np.uint64))
    assert suspects.overflowed and suspects.array.size == 0


@pytest.mark.parametrize("index", ["log", "spilled", "bloom"])
def test_when_most_keys_repeat_then_the_file_is_refused_in_bounded_memory_with_one_clear_error(index: str) -> None:
    records = list(generate_file(JNKS_PAYMENTS, 400, seed=6, today=TODAY))
    data = with_duplicates(records, JNKS_PAYMENTS, [(number, number + 200) for number in range(200)])
    reads = []

    def chunks() -> Iterator[bytes]:
        reads.append(1)
        yield data

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("kei_gateway.layouts.uniqueness.MAX_SUSPECTS", 50)
        report = validate_stream(chunks(), JNKS_PAYMENTS, OPTIONS, reread=chunks,
                                 expected_size=len(data) if index == "log" else None,
                                 scratch=MemoryScratch if index == "spilled" else None,
                                 filter_bits_log2=TINY if index == "bloom" else 27)
    assert not report.valid and len(reads) == 1  # no second read
    assert [error.record for error in report.errors] == [None]
    message = report.errors[0].message()
    assert "more than 50" in message and "(chassis_no, tax_year)" in message
    assert ("could not be settled in bounded memory" if index == "bloom" else "occur more than once") in message
    # Under the bound the same file names every duplicate at its record.
    named = validate_stream(iter([data]), JNKS_PAYMENTS, OPTIONS, reread=lambda: iter([data]), expected_size=len(data))
    assert named.error_count == 200 and all(error.record for error in named.errors)
