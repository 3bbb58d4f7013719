"""Valid JNKS 納付情報 files of any size for the upload benchmark, generated fast.

:func:`generate_file` makes about 37,000 records a second, so 7.7 M records (512 MiB)
would take three and a half minutes. Instead one block of distinct valid records
is generated once and repeated; in copy *k* the six leading digits of the chassis
number's 12-digit serial (``DMYnn-000000000001``, always zero in the block) are set
to *k*, so every ``(chassis_no, tax_year)`` stays unique and every record stays valid.
Files are cached under ``bench/out/`` (their dates are in the past, so they stay valid).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
RECORD = 70
BLOCK = 100_000
LG_CODE = "131041"  # the lg_code of kei_gateway.sim.harness.demo_config_text
SERIAL_HIGH = 18 + 6  # offset of the serial's first digit inside the record (chassis_no at 18, "DMYnn-")
JST = datetime.timezone(datetime.timedelta(hours=9))


def _block(records: int, seed: int) -> bytes:
    from kei_gateway.layouts import generate_file, get_layout

    today = datetime.datetime.now(JST).date() - datetime.timedelta(days=1)
    return b"".join(generate_file(get_layout("jnks-payments"), records, seed=seed, today=today, lg_code=LG_CODE))


def jnks_file(records: int, seed: int = 42) -> Path:
    """A cached valid JNKS payments file of *records* records (70 bytes each) for lg_code 131041."""
    path = OUT / f"upload-jnks-{LG_CODE}-{records}-s{seed}.dat"
    if path.exists() and path.stat().st_size == records * RECORD:
        return path
    OUT.mkdir(exist_ok=True)
    block = bytearray(_block(min(records, BLOCK), seed))
    per_block = len(block) // RECORD
    for position in range(6):
        assert set(block[SERIAL_HIGH + position::RECORD]) == {ord("0")}, "the generator's chassis serial changed"
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        remaining, copy = records, 0
        while remaining > 0:
            digits = f"{copy:06d}".encode()
            for position, digit in enumerate(digits):
                block[SERIAL_HIGH + position::RECORD] = bytes([digit]) * per_block
            take = min(remaining, per_block)
            out.write(memoryview(block)[:take * RECORD])
            remaining -= take
            copy += 1
        out.flush()
        os.fsync(out.fileno())
    tmp.rename(path)
    return path


def small_files(count: int, records: int, seed: int = 1000) -> list[bytes]:
    """*count* distinct valid files of *records* records each (for the latency run)."""
    return [_block(records, seed + number) for number in range(count)]
