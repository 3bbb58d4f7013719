"""The streaming validator: bytes in (push-style), a :class:`ValidationReport` out (SPEC §2).

Blocks of whole records go through the column-wise fast path
(:mod:`kei_gateway.layouts.columnar`); the records it does not accept as they are go
through the precise checker (:mod:`kei_gateway.layouts.precise`), which names record,
field and reason and applies the 外字 policy.  Uniqueness is followed across blocks
(:mod:`kei_gateway.layouts.uniqueness`).  Pure: no clock, no files; ``today`` (JST) is
in the options.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from heapq import merge
from itertools import islice
from typing import Final

import numpy as np
import numpy.typing as npt

from kei_gateway.layouts._keyfilter import DEFAULT_FILTER_BITS_LOG2, Scratch
from kei_gateway.layouts.columnar import Matrix, as_matrix, columnar_plan
from kei_gateway.layouts.errors import LayoutError
from kei_gateway.layouts.fields import Layout
from kei_gateway.layouts.precise import RecordChecker
from kei_gateway.layouts.report import ValidationOptions, ValidationReport
from kei_gateway.layouts.uniqueness import Columns, ExactKeys, FilteredKeys, SuspectKeys, Uniqueness
from kei_gateway.layouts.utf8 import Utf8Block, Utf8Conversion, convert_utf8_record, convert_wide_in_place, utf8_block

__all__ = ["BOM", "Validator", "validate_bytes", "validate_stream"]

BOM: Final = b"\xef\xbb\xbf"
_BLOCK_SIZE: Final = 1 << 19
"""Bytes gathered before a block is validated (whole records only): 512 KiB, ~7,500 JNKS records a numpy
call (the calls' own cost is what a smaller block pays most: 256 KiB took 20 % more time, 1 MiB 5 % less),
while the block and its temporaries stay a few MiB: peak RSS ≤ 64 MB with the key index's 8–16 MiB, and
the daemon's under 150 MB on a 512 MiB upload (1 MiB blocks: 150–151 MB)."""
_UTF8_BLOCK_SIZE: Final = 1 << 18
"""The same for UTF-8 input, whose conversion makes more copies of a block (1 MiB reached 67 MB)."""
_SPLIT_BELOW: Final = 32
"""A block whose records are not whole is halved until it has fewer records than this; then record by record."""


class Validator:
    """Validates one file fed in pieces; push-style, so a Twisted protocol can feed it as data arrives.

    ``sink``, when given, receives the CP932 bytes to pass on (converted from
    UTF-8, 外字 substituted): use them only if the report is valid.
    ``fast_path=False`` checks every record with the precise validator only
    (same result, slower; tests compare the two).

    Uniqueness (SPEC §2: one record per key within a file) is checked one of two ways:

    * ``rereadable=False`` (the default, for input that can be read only once,
      e.g. standard input): every key is kept exactly in memory, about 95 bytes
      a record; :meth:`close` returns the final report.
    * ``rereadable=True``: keys go into a fixed-size index and only the keys it
      cannot rule out (suspects) are kept, as fingerprints: a log of every key's
      64-bit fingerprint, sorted at :meth:`close` to find the repeated ones, when
      ``expected_size`` (the file's size in bytes) gives a number of records
      that fits in the largest filter's memory (8 bytes a record),
      else, given ``scratch`` (a factory of :class:`~kei_gateway.layouts._keyfilter.Scratch`),
      the same log spilled there in partitions (8 bytes a record on the scratch, a few
      MiB in memory, exact at any size), else a Bloom filter (``2 ** filter_bits_log2``
      bits, 16 MiB by default; smaller for fewer records).  If there are any after
      :meth:`close`, :attr:`needs_rescan` is true, the report is not final
      (``valid`` is false) and the caller feeds the same bytes again to
      :meth:`rescan`, which finds, exactly, the suspects that repeat an earlier
      record and reports them where the in-memory check would have.  More suspects
      than :data:`~kei_gateway.layouts.uniqueness.MAX_SUSPECTS` (a file whose keys mostly
      repeat) end the check in bounded memory: the file is invalid with one file-level
      error instead (:meth:`_too_many_suspects`), and no second read is made.
    """

    def __init__(self, layout: Layout, options: ValidationOptions,
                 sink: Callable[[bytes], None] | None = None, *, fast_path: bool = True,
                 rereadable: bool = False, filter_bits_log2: int = DEFAULT_FILTER_BITS_LOG2,
                 expected_size: int | None = None, scratch: Callable[[], Scratch] | None = None) -> None:
        self.layout = layout
        self.options = options
        self.report = ValidationReport(layout=layout.name)
        self._sink = sink
        self._pieces: list[bytes] = []  # fed, not yet validated: the lines after the last block
        self._pending = 0  # their length
        self._offset = 0  # file offset of the first of them
        self._checker = RecordChecker(layout, options)
        self._plan = columnar_plan(layout, options.rule_context) if fast_path else None
        self._in_place = options.encoding == "utf-8" and options.gaiji != "reject"
        """UTF-8 records whose only fault is a 外字 in a ``K`` field are converted in place (the policy replaces it)."""
        self._unique: Uniqueness | None = None
        if layout.unique_keys is not None:
            if rereadable:
                records = None if expected_size is None else expected_size // layout.record_length + 1
                self._unique = FilteredKeys(layout, records, filter_bits_log2, scratch)
            else:
                self._unique = ExactKeys(layout)
        # Only a filtered uniqueness check may need the second read, whose bytes must be the first's.
        self._digest = _Checksum() if isinstance(self._unique, FilteredKeys) else None
        self._duplicates: list[LayoutError] | None = None  # set in the second read: where duplicates go
        self._duplicate_count = 0
        self._closed = False
        self._block_size = _BLOCK_SIZE if options.encoding == "cp932" else min(_BLOCK_SIZE, _UTF8_BLOCK_SIZE)
        self._counted_errors = 0  # errors other than duplicates: reaching max_errors stops the validation
        self._tail = 0  # bytes fed since the last LF: the record being read
        self._uniform = options.encoding == "cp932"
        """So far every line was one record's length (the fast path's blocks): the second read can skip the check."""
        self._chars = sum(item.chars for item in layout.fields)
        """Characters in a record (UTF-8 input is sliced by characters)."""
        self._max_line = len(BOM) + (layout.record_length if options.encoding == "cp932" else 4 * self._chars + 2)
        """The longest line a record of the layout can be (a BOM on the first one, UTF-8's 4 bytes a character)."""
        self._stop_record: int | None = None  # the second read: records after it were not checked in the first

    @property
    def stopped(self) -> bool:
        """Validation has stopped (``max_errors`` reached, or a record without CR LF): feed no more."""
        return self.report.stopped_at is not None

    @property
    def needs_rescan(self) -> bool:
        """Whether :meth:`rescan` must read the file again before the report is final."""
        return self.report.uniqueness_pending

    # -- feeding

    def feed(self, data: bytes) -> None:
        """Add the next bytes of the file."""
        if self._closed:
            raise RuntimeError("feed() after close()")
        if not data or self.stopped:
            return
        if type(data) is not bytes:  # a bytearray could change after the call: keep a copy
            data = bytes(data)
        self._pieces.append(data)
        self._pending += len(data)
        last = data.rfind(b"\n") + 1
        self._tail = len(data) - last if last else self._tail + len(data)
        if self._tail > self._max_line:  # never buffer a record past its width (SPEC §4: bounded memory)
            self._no_line_end()
        elif self._pending >= self._block_size:
            self._drain(final=False)

    def _no_line_end(self) -> None:
        """The record being read is longer than any record of the layout: check the lines before it, then stop."""
        data = b"".join(self._pieces)  # at most a block and the last piece: the tail was checked at every feed
        complete = data[:len(data) - self._tail]
        del data
        self._pieces[:] = [complete] if complete else []
        self._pending = len(complete)
        self._drain(final=True)
        if self.stopped:
            return
        self.report.records += 1
        self._error(LayoutError(self.report.records, self._offset, (
            f"has no CR LF within {self._max_line} bytes ({self.layout.name} records are "
            f"{self.layout.record_length} bytes including CR LF): the file is not a {self.layout.name} file, "
            "or its line ends are missing; validation stopped here")))
        self._stop()

    def _stop(self) -> None:
        self._uniform = False
        self.report.stopped_at = self.report.records
        self._pieces.clear()
        self._pending = 0

    def _drain(self, *, final: bool) -> None:
        """Validate the complete lines fed so far, in blocks of about ``_BLOCK_SIZE`` (bounded memory).

        Usually the pieces up to the last LF of the last one are one block, made with one
        copy; larger pieces are cut into blocks.
        """
        pieces = self._pieces
        if not pieces:
            return
        last = pieces[-1]
        cut = last.rfind(b"\n") + 1
        if cut and self._pending - len(last) + cut <= 2 * self._block_size:
            block = last if len(pieces) == 1 and cut == len(last) else b"".join([*pieces[:-1], last[:cut]])
            rest = last[cut:]
            pieces.clear()
            self._process(block)
        else:
            data = b"".join(pieces)
            pieces.clear()
            start = 0
            for end in _line_block_ends(data, self._block_size, final):
                if self.stopped:
                    break
                self._process(data[start:end])
                start = end
            rest = data[start:]
        if rest:
            pieces.append(rest)
        self._pending = len(rest)

    def close(self) -> ValidationReport:
        """The file is complete: check what is left and return the report."""
        if self._closed:
            return self.report
        self._closed = True
        self._drain(final=True)
        rest = b"".join(self._pieces)
        if self.stopped:
            pass
        elif rest:
            if self._digest is not None:
                self._digest.update(rest)
            self._uniform = False
            self._trailing(rest)
        elif self._offset == 0:
            self._error(LayoutError(None, 0, "the file is empty; a file has at least one record"))
        if isinstance(self._unique, FilteredKeys):
            self._unique.finish()
            if self._unique.suspects.overflowed:
                self._too_many_suspects(self._unique)
                self._unique = None
            elif self._unique.suspects:
                self.report.uniqueness_pending = True
            else:
                self._unique = None  # every key was new: the filter's 16 MiB can go now
        return self.report

    def _too_many_suspects(self, unique: FilteredKeys) -> None:
        """More keys repeat than the second read may follow in bounded memory: one file-level error, no second read."""
        keys = ", ".join(unique.columns)
        limit = unique.suspects.limit
        if unique.exact_index:
            reason = (f"more than {limit:,} different ({keys}) values occur more than once: each must be unique "
                      "within a file; the file repeats too many to list them record by record (bounded memory), "
                      "so check how it was produced and write it again")
        else:
            reason = (f"uniqueness of ({keys}) could not be settled in bounded memory: more than {limit:,} keys may "
                      "repeat an earlier record's; the file is refused; validate it with a scratch directory "
                      "(kei-gateway validate FILE) to have the repeated records named")
        self._error(LayoutError(None, 0, reason), counted=False)

    def rescan(self, chunks: Iterable[bytes]) -> ValidationReport:
        """Read the same bytes again to settle the suspect keys; return the final report.

        Only the duplicate errors come from this read (the same errors, at the
        same records, fields and offsets as the in-memory check gives); they are
        merged into the report in file order.  ``ValueError`` if the bytes
        differ from the first read (the file changed in between).
        """
        if not self._closed:
            raise RuntimeError("rescan() before close()")
        if not self.report.uniqueness_pending:
            return self.report
        first = self._unique
        assert isinstance(first, FilteredKeys) and self._digest is not None
        self._unique = None  # the filter's pages go before the second read; only the suspects are needed
        second = Validator(self.layout, self.options, fast_path=self._plan is not None)
        second._unique = SuspectKeys(self.layout, first.suspects, first.salt)
        del first
        second._duplicates = []
        second._stop_record = self.report.stopped_at
        digest = _Checksum()
        # The bytes the first read checked (all of them, unless it stopped), checksummed as they go.
        checked = _first_bytes(chunks, self._digest.value[0], digest)
        if self.options.encoding == "cp932":
            second._replay_suspects(checked, uniform=self._uniform)
        else:  # UTF-8: record places depend on the conversion, so validate it all again
            for chunk in checked:
                second.feed(chunk)
            second.close()
        if digest.value != self._digest.value:
            raise ValueError("the file changed between the two reads of its validation; validate it again")
        report = self.report
        report.errors = list(islice(merge(report.errors, second._duplicates, key=_error_order),
                                    self.options.max_errors))
        report.error_count += second._duplicate_count
        report.uniqueness_pending = False
        return report

    def _replay_suspects(self, chunks: Iterable[bytes], *, uniform: bool = False) -> None:
        """Second read of a CP932 file: only the records whose key is a suspect's are validated again.

        Record numbers are line numbers, as in the first read.  Each line that
        could carry a suspect key (its unique fields' fingerprint is a suspect's) is replayed
        through the precise path at its number and offset, which settles it
        exactly and reports a duplicate where the in-memory check would.
        Runs of well-formed lines are scanned as columns, without per-record work;
        ``uniform`` (the first read saw every line at one record's length, on the same
        bytes: the checksums are compared at the end) skips checking that they are.
        """
        unique = self._unique
        assert isinstance(unique, SuspectKeys)
        layout = self.layout
        size, length = layout.record_length, layout.data_length
        parts = [(layout.offsets[key], layout.offsets[key] + layout[key].width) for key in unique.columns]
        number = offset = 0

        def replay(line: bytes, at_number: int, at_offset: int) -> None:
            self.report.records = at_number - 1
            self._line(line, at_offset)

        def scan(piece: bytes) -> None:
            nonlocal number, offset
            count = len(piece) // size
            if number > 0 and len(piece) == count * size and (uniform or (
                    piece.count(b"\n") == count and piece[size - 1::size] == b"\n" * count
                    and piece[size - 2::size] == b"\r" * count)):
                # Keyed fingerprints of every key narrow the records down; the replay settles them exactly.
                for index in unique.candidates(Columns(layout, piece)):
                    replay(piece[index * size:(index + 1) * size], number + index + 1, offset + index * size)
                number += count
            else:
                start = 0
                while start < len(piece):
                    end = piece.index(b"\n", start) + 1
                    line = piece[start:end]
                    number += 1
                    data = line[:-2] if line.endswith(b"\r\n") else line[:-1]
                    if number == 1 or (len(data) == length
                                       and unique.is_suspect(b"".join(data[a:b] for a, b in parts))):
                        replay(line, number, offset + start)
                    start = end
            offset += len(piece)

        for block in _line_blocks(chunks, self._block_size):
            scan(block)

    # -- internals

    def _error(self, error: LayoutError, *, counted: bool = True) -> None:
        """Keep an error; ``counted`` ones (all but duplicates) stop the validation at ``max_errors``.

        Duplicates do not count, so that the first read of a filtered uniqueness check (which
        finds them only in the second read) stops at the same record as the in-memory check.
        """
        self.report.error_count += 1
        self._counted_errors += counted
        if len(self.report.errors) < self.options.max_errors:
            self.report.errors.append(error)

    def _duplicate(self, error: LayoutError) -> None:
        if self._duplicates is None:
            self._error(error, counted=False)
            return
        self._duplicate_count += 1
        if len(self._duplicates) < self.options.max_errors:
            self._duplicates.append(error)

    def _emit(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink(data)

    def _process(self, block: bytes) -> None:
        """Validate a block of whole lines (ending in LF)."""
        if self.stopped:
            return
        if self._digest is not None:
            self._digest.update(block)
        self._lines(block, self._offset)
        self._offset += len(block)

    def _lines(self, block: bytes, offset: int) -> None:
        """Fast path for the block's records; the records it does not accept go through the precise checker.

        A block that is not whole records (a wrong length, a bare LF) is halved, so a
        broken line costs only its neighbourhood; below ``_SPLIT_BELOW`` records it goes
        line by line.
        """
        if self._plan is not None:
            utf8 = None
            if self.options.encoding == "cp932":
                cp932: bytes | None = block
            else:
                utf8 = utf8_block(block)
                cp932 = None if utf8 is None else utf8.cp932
            matrix = None if cp932 is None else as_matrix(cp932, self.layout.record_length, count_lines=False)
            if matrix is not None:
                assert cp932 is not None
                narrow = None
                if self._in_place:  # which rejected records failed only checks of K fields (the 外字 policy's)
                    ok, narrow = self._plan.check_split(matrix)
                else:
                    ok = self._plan.check(cp932, matrix)
                # Records are lines only if no other byte is an LF: a record that passed holds none but its
                # last byte, so only those that did not are looked at.
                if ok.all() or not (matrix[~ok, :-1] == 0x0A).any():
                    if self.report.records == 0 and offset == 0 and cp932.startswith(BOM):
                        ok[0] = False  # the precise path names the BOM
                    self._runs(block, cp932, offset, ok, matrix, narrow, utf8)
                    return
            self._uniform = False
            if len(block) > _SPLIT_BELOW * self.layout.record_length:
                middle = block.rfind(b"\n", 0, len(block) // 2) + 1
                if 0 < middle < len(block):
                    self._lines(block[:middle], offset)
                    if not self.stopped:
                        self._lines(block[middle:], offset + middle)
                    return
        self._uniform = False
        self._precise_lines(block, offset)

    def _precise_lines(self, block: bytes, offset: int) -> None:
        start = 0
        while start < len(block) and not self.stopped:
            end = block.index(b"\n", start) + 1
            self._line(block[start:end], offset + start)
            start = end

    def _runs(self, block: bytes, cp932: bytes, offset: int, ok: npt.NDArray[np.bool_], matrix: Matrix,
              narrow: npt.NDArray[np.bool_] | None, utf8: Utf8Block | None) -> None:
        """Pass on the runs of accepted records; check the others precisely, in file order.

        ``block`` is the input (CP932 or UTF-8), ``cp932`` the same records in CP932 (the
        same object for CP932 input, ``matrix`` as rows); record ``i`` is line ``i`` of both.
        UTF-8 records the fast path rejected are first converted, as the precise path
        converts them (外字 policy included), and checked again column-wise: those that
        pass then join the runs with their 縮退 and 〓 counted.  ``narrow``, when given, says
        which records failed only checks of ``K`` fields: those are converted in place.
        ``utf8``: the UTF-8 ``block`` converted (:func:`utf8_block`).
        """
        size = self.layout.record_length
        count = len(ok)
        line_starts: npt.NDArray[np.intp] | None = None

        def line(index: int) -> tuple[bytes, int]:
            nonlocal line_starts
            if utf8 is None:
                return block[index * size:(index + 1) * size], offset + index * size
            if line_starts is None:  # where each UTF-8 line starts: only for a record checked on its own
                line_starts = np.concatenate(([0], np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 0x0A) + 1))
            begin, finish = int(line_starts[index]), int(line_starts[index + 1])
            return block[begin:finish], offset + begin

        converted: dict[int, Utf8Conversion] = {}
        if utf8 is not None and not ok.all():
            cp932, converted = self._convert_rejected(cp932, ok, line, offset, matrix, narrow, utf8)
        changes = np.flatnonzero(np.diff(ok.view(np.int8))) + 1
        bounds = [0, *changes.tolist(), count]
        for first, last in zip(bounds, bounds[1:]):
            if ok[first]:
                run = cp932[first * size:last * size]
                if self._unique is None or self._unique.block(Columns(self.layout, run), self.report.records + 1):
                    for index in sorted(index for index in converted if first <= index < last):
                        conversion = converted[index]
                        self.report.gaiji_substituted += conversion.substituted
                        for key, replacements in conversion.replacements:
                            self.report.add_degenerations(self.report.records + 1 + index - first, key,
                                                          replacements, self.options.max_degenerations)
                    self.report.records += last - first
                    self._emit(run)
                    continue
            for index in range(first, last):  # rejected records, or a run whose keys repeat: one by one
                self._line(*line(index))
                if self.stopped:
                    return

    def _convert_rejected(self, cp932: bytes, ok: npt.NDArray[np.bool_], line: Callable[[int], tuple[bytes, int]],
                          offset: int, matrix: Matrix, narrow: npt.NDArray[np.bool_] | None, utf8: Utf8Block,
                          ) -> tuple[bytes, dict[int, Utf8Conversion]]:
        """UTF-8 records the fast path rejected, converted as the precise conversion does and checked again.

        Records that failed only checks of ``K`` fields (``narrow``) have their 外字 replaced
        in place (:func:`convert_wide_in_place`) and only their ``K`` checks made again; the
        others, and those it leaves, are converted record by record (:func:`convert_utf8_record`)
        and checked column-wise again.  Marks in ``ok`` the records that now pass; returns the
        block with their CP932 bytes and their conversions (for the 縮退 and 〓 counts).  The
        others stay rejected.
        """
        assert self._plan is not None
        size = self.layout.record_length
        expected = self._chars
        rejected = np.flatnonzero(~ok)
        texts = _rejected_texts(utf8.text, rejected, expected + 2) if narrow is not None else {}
        if self.report.records == 0 and offset == 0:
            rejected = rejected[rejected != 0]  # the BOM of record 1 is the precise path's
        fixes: list[tuple[int, bytes]] = []
        kept: dict[int, Utf8Conversion] = {}
        if texts:
            assert narrow is not None
            wide_only = rejected[narrow[rejected]]

            def text_of(row: int) -> str | None:
                text = texts[int(wide_only[row])]
                return text[:-2] if text.endswith("\r\n") else None

            in_place = convert_wide_in_place(self.layout, self.options, matrix[wide_only], text_of, utf8.char)
            if in_place:
                rows = list(in_place)
                retry = b"".join(in_place[row].record + b"\r\n" for row in rows)  # type: ignore[operator]
                retried = as_matrix(retry, size, count_lines=False)
                assert retried is not None  # records of the right length, each ending in LF
                passed = self._plan.check_wide(retried)
                for position, row in enumerate(rows):
                    if passed is np.True_ or passed[position]:
                        index = int(wide_only[row])
                        fixes.append((index, retry[position * size:(position + 1) * size]))
                        kept[index] = in_place[row]
                        ok[index] = True
                if kept:
                    rejected = rejected[~ok[rejected]]
        candidates: dict[int, Utf8Conversion] = {}
        for index in rejected.tolist():
            raw, _ = line(index)
            if not raw.endswith(b"\r\n"):
                continue  # structure is the precise path's
            try:
                text = raw[:-2].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(text) != expected:
                continue
            conversion = convert_utf8_record(self.layout, text, self.options, 0, 0)
            if conversion.record is not None and len(conversion.record) == size - 2:
                candidates[index] = conversion
        if candidates:
            indexes = list(candidates)
            retry = b"".join(candidates[index].record + b"\r\n" for index in indexes)  # type: ignore[operator]
            retried = as_matrix(retry, size)
            passed = np.zeros(len(indexes), dtype=np.bool_) if retried is None else self._plan.check(retry, retried)
            for position, index in enumerate(indexes):
                if passed[position]:
                    fixes.append((index, retry[position * size:(position + 1) * size]))
                    ok[index] = True
                    kept[index] = candidates[index]
        if not fixes:
            return cp932, {}
        # The block with the converted records in their places: one copy.
        fixes.sort()
        whole = memoryview(cp932)
        pieces: list[bytes | memoryview] = []
        done = 0
        for index, record in fixes:
            pieces += [whole[done:index * size], record]
            done = (index + 1) * size
        pieces.append(whole[done:])
        return b"".join(pieces), kept

    def _line(self, line: bytes, offset: int) -> None:
        """Validate one line (ending in LF) precisely; stop after the record that reaches ``max_errors``."""
        if self._stop_record is not None and self.report.records >= self._stop_record:
            self._stop()  # the second read: records after this one were not checked in the first
            return
        self._record(line, offset)
        if self._counted_errors >= self.options.max_errors:
            self._stop()

    def _record(self, line: bytes, offset: int) -> None:
        self.report.records += 1
        number = self.report.records
        if number == 1 and line.startswith(BOM):
            self._error(LayoutError(1, 0, "the file starts with a byte order mark (EF BB BF); save it without BOM"))
            line = line[3:]
            offset += 3
        if line.endswith(b"\r\n"):
            data = line[:-2]
        else:
            self._error(LayoutError(number, offset + len(line) - 1, "ends with a bare LF (no CR before it); "
                                                                    "records end with CR LF"))
            data = line[:-1]
        if self.options.encoding == "utf-8":
            self._utf8_record(data, number, offset)
            return
        self._cp932_record(data, number, offset)

    def _structure_ok(self, data: bytes, number: int, offset: int, expected: int, unit: str, length: int) -> bool:
        cr = data.find(b"\r")
        if cr >= 0:
            self._error(LayoutError(number, offset + cr, "has a CR without LF inside the record; "
                                                         "each record ends with CR LF"))
        nul = data.find(b"\x00")
        if length != expected:
            if nul >= 0:
                self._error(LayoutError(number, offset + nul, "contains a NUL byte (0x00); the file is damaged "
                                                               "or not a text file"))
            self._error(LayoutError(number, offset, f"is {length} {unit} long without CR LF, expected {expected} "
                                                    f"({self.layout.name} records are {self.layout.record_length} "
                                                    "bytes including CR LF)"))
            return False
        return cr < 0

    def _cp932_record(self, data: bytes, number: int, offset: int, field_offsets: Sequence[int] | None = None,
                      converted: bool = False) -> None:
        if not converted and not self._structure_ok(data, number, offset, self.layout.data_length, "bytes",
                                                    len(data)):
            return
        result = self._checker.check(data, number, offset, field_offsets)
        for error in result.errors:
            self._error(error)
        self.report.gaiji_substituted += result.substituted
        for key, replacements in result.replacements:
            self.report.add_degenerations(number, key, replacements, self.options.max_degenerations)
        if result.unique_key is not None and self._unique is not None \
                and self._unique.record(result.unique_key, number):
            keys = self.layout.unique_keys or ()
            first = self.layout[keys[0]]
            index = self.layout.fields.index(first)
            place = offset + self.layout.offsets[first.key] if field_offsets is None else field_offsets[index]
            self._duplicate(LayoutError(number, place, f"repeats the ({', '.join(keys)}) of an earlier record; "
                                                       "each must be unique within a file", first.name, first.key,
                                        str(result.values[first.key]), first.personal))
        self._emit(result.output + b"\r\n")

    def _utf8_record(self, data: bytes, number: int, offset: int) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._error(LayoutError(number, offset + exc.start, "has bytes that are not valid UTF-8; "
                                                                "check the flow's encoding setting"))
            return
        if number == 1 and text.startswith("\ufeff"):
            self._error(LayoutError(1, offset, "the file starts with a byte order mark (U+FEFF); save it without BOM"))
            text = text[1:]
            offset += 3
            data = data[3:]
        if not self._structure_ok(data, number, offset, self._chars, "characters", len(text)):
            return
        conversion = convert_utf8_record(self.layout, text, self.options, number, offset)
        for error in conversion.errors:
            self._error(error)
        self.report.gaiji_substituted += conversion.substituted
        if conversion.record is not None:
            for key, replacements in conversion.replacements:
                self.report.add_degenerations(number, key, replacements, self.options.max_degenerations)
            self._cp932_record(conversion.record, number, offset, conversion.field_offsets, converted=True)

    def _trailing(self, rest: bytes) -> None:
        number = self.report.records + 1
        offset = self._offset
        if rest.endswith(b"\r"):
            reason = "the last record ends with CR but no LF; records end with CR LF"
        elif self.report.records == 0 or len(rest) >= self.layout.data_length:
            reason = "the last record is not terminated by CR LF"
        else:
            reason = f"{len(rest)} bytes of data after the last CR LF; remove them or complete the record"
        self.report.records += 1
        self._error(LayoutError(number, offset + len(rest), reason))


def _rejected_texts(text: str, rejected: npt.NDArray[np.intp], line_chars: int) -> dict[int, str]:
    """The lines of a block's text (:attr:`Utf8Block.text`) at the ``rejected`` records, in order.

    Every other record passed the fast path, so it is ``line_chars`` characters long (one a byte
    outside ``K`` fields, one a pair in them); a rejected one is measured to its LF.  Empty if
    the text does not line up with that.
    """
    texts: dict[int, str] = {}
    shift = 0
    for index in rejected.tolist():
        start = index * line_chars + shift
        end = text.find("\n", start) + 1
        if not end or (start and text[start - 1] != "\n"):
            return {}
        texts[index] = text[start:end]
        shift += end - start - line_chars
    return texts


def _line_block_ends(data: bytes, size: int, final: bool) -> Iterator[int]:
    """Where blocks of whole lines of about ``size`` bytes cut from the start of ``data`` end.

    Blocks are cut while ``size`` bytes remain (any, when ``final``); a line longer than a
    block is one block; what follows the last LF is never part of one.
    """
    start = 0
    while len(data) - start >= (1 if final else size):
        end = data.rfind(b"\n", start, start + size) + 1
        if end <= start:  # a line longer than a block: take it whole
            end = data.find(b"\n", start + size) + 1
            if end <= 0:
                return
        yield end
        start = end


def _line_blocks(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The chunks' bytes as blocks of whole lines of about ``size`` bytes; what follows the last LF is left out."""
    rest = b""
    for chunk in chunks:
        data = rest + chunk if rest else chunk
        start = 0
        for end in _line_block_ends(data, size, False):
            yield data[start:end]
            start = end
        rest = data[start:]
    start = 0
    for end in _line_block_ends(rest, size, True):
        yield rest[start:end]
        start = end


def _first_bytes(chunks: Iterable[bytes], limit: int, checksum: _Checksum) -> Iterator[bytes]:
    """The chunks up to ``limit`` bytes in all (the last one cut), each added to ``checksum``."""
    left = limit
    for chunk in chunks:
        if left <= 0:
            return
        piece = chunk if len(chunk) <= left else chunk[:left]
        left -= len(piece)
        checksum.update(piece)
        yield piece


class _Checksum:
    """What tells the second read that it saw the first read's bytes: their length and CRC-32.

    Not SHA-256: it cost a fifth of a valid file's validation, and what it guards against
    is a writer changing the file between the two reads (which the ingest also checks by
    size, time and inode), not a forger: whoever can write the outbox chooses its bytes.
    A change of any 32 bits or fewer in a row is always seen, any other one with odds of
    1 in 2^32 of being missed.
    """

    def __init__(self) -> None:
        self._crc = 0
        self._length = 0

    def update(self, data: bytes | bytearray) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self._length += len(data)

    @property
    def value(self) -> tuple[int, int]:
        return self._length, self._crc


def validate_stream(chunks: Iterable[bytes], layout: Layout, options: ValidationOptions,
                    sink: Callable[[bytes], None] | None = None, *, fast_path: bool = True,
                    reread: Callable[[], Iterable[bytes]] | None = None,
                    filter_bits_log2: int = DEFAULT_FILTER_BITS_LOG2,
                    expected_size: int | None = None,
                    scratch: Callable[[], Scratch] | None = None) -> ValidationReport:
    """Validate a file given as an iterable of byte chunks (e.g. ``iter(partial(f.read, 1 << 16), b"")``).

    ``reread``, when the file can be read again, returns a fresh iterable of
    the same bytes: uniqueness then takes fixed memory (see :class:`Validator`)
    and ``reread`` is called only when suspect keys need the second read.
    Without it every key is kept in memory.  ``scratch`` lets a large file's key log go
    there instead of a Bloom filter (see :class:`Validator`).
    """
    validator = Validator(layout, options, sink, fast_path=fast_path, rereadable=reread is not None,
                          filter_bits_log2=filter_bits_log2, expected_size=expected_size, scratch=scratch)
    for chunk in chunks:
        validator.feed(chunk)
        if validator.stopped:  # max_errors reached, or a record without CR LF: the rest is not read
            break
    report = validator.close()
    if validator.needs_rescan:
        assert reread is not None
        report = validator.rescan(reread())
    return report


def validate_bytes(data: bytes, layout: Layout, options: ValidationOptions,
                   sink: Callable[[bytes], None] | None = None, *, fast_path: bool = True,
                   filter_bits_log2: int = DEFAULT_FILTER_BITS_LOG2) -> ValidationReport:
    """Validate a whole file held in memory (read twice when uniqueness needs it)."""
    return validate_stream((data,), layout, options, sink, fast_path=fast_path, reread=lambda: (data,),
                           filter_bits_log2=filter_bits_log2, expected_size=len(data))


def _error_order(error: LayoutError) -> int:
    """File order of errors: by record (``None``, the file as a whole, first); stable within a record."""
    return 0 if error.record is None else error.record
