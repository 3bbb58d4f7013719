"""The AIRIS download's container: an AES-256 (WinZip AES) ZIP holding one CSV, opened in memory.

One small interface, :class:`AirisContainer`: given the downloaded bytes and the key
text, yield the CSV's plaintext in chunks.  Nothing is written anywhere: the ZIP is read
from memory and the CSV is decrypted and inflated as it is consumed, so the plaintext
exists only in the chunks in flight.  Another container scheme (a new AIRIS format) is
one more class with the same method.

Bounds (SPEC §4 "bounded by construction"): the ZIP itself is at most the caller's
``max_file_size``; the CSV may inflate to at most :data:`MAX_CSV_BYTES` (counted as it
streams, whatever the ZIP's header claims — a ZIP bomb stops there); the key file is at
most :data:`MAX_KEY_BYTES`.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from typing import Final, Protocol

import pyzipper

__all__ = [
    "AirisContainer",
    "AirisContainerError",
    "CHUNK_BYTES",
    "MAX_CSV_BYTES",
    "MAX_KEY_BYTES",
    "WinZipAesContainer",
    "read_key",
    "write_airis_zip",
]

MAX_CSV_BYTES: Final = 1 << 30
"""1 GiB of CSV: about 2.5 million vehicles at ~400 bytes a row, past a whole prefecture's 小型二輪."""
MAX_KEY_BYTES: Final = 1024
CHUNK_BYTES: Final = 1 << 20
_AES_256: Final = 3
"""WinZip AES strength 3 = AES-256."""


class AirisContainerError(ValueError):
    """The AIRIS file or its key cannot be used; the message says what and what to do (no content)."""


class AirisContainer(Protocol):
    """Opens an AIRIS download: the plaintext CSV in chunks, or :class:`AirisContainerError`."""

    def csv_chunks(self, data: bytes, key: str, *, label: str) -> Iterator[bytes]: ...


def read_key(data: bytes, *, label: str) -> str:
    """The password in a key file: UTF-8, one line (a trailing line end and spaces ignored)."""
    if len(data) > MAX_KEY_BYTES:
        raise AirisContainerError(f"{label}: {len(data)} bytes, a key file is at most {MAX_KEY_BYTES}: "
                                  "is it the key from the AIRIS site?")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AirisContainerError(f"{label}: not UTF-8 text: save the key from the AIRIS site as UTF-8") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise AirisContainerError(f"{label}: {'empty' if not lines else f'{len(lines)} lines'}: a key file holds "
                                  "one line, the key from the AIRIS site")
    return lines[0]


class WinZipAesContainer:
    """The v1 container: a ZIP whose one ``.csv`` entry is AES-256 encrypted (WinZip AES, ``pyzipper``)."""

    def __init__(self, max_csv_bytes: int = MAX_CSV_BYTES) -> None:
        self.max_csv_bytes = max_csv_bytes

    def csv_chunks(self, data: bytes, key: str, *, label: str) -> Iterator[bytes]:
        try:
            archive = pyzipper.AESZipFile(io.BytesIO(data))
        except (pyzipper.BadZipFile, OSError, ValueError, EOFError):
            raise AirisContainerError(f"{label}: not a ZIP file, or damaged: download it from AIRIS again") from None
        with archive:
            entries = [entry for entry in archive.infolist() if not entry.is_dir()]
            csvs = [entry for entry in entries if entry.filename.lower().endswith(".csv")]
            if len(entries) != 1 or len(csvs) != 1:
                raise AirisContainerError(
                    f"{label}: holds {len(csvs)} CSV files and {len(entries) - len(csvs)} other files; an AIRIS "
                    "download holds exactly one CSV: download it again")
            entry = csvs[0]
            if not entry.flag_bits & 0x1 or getattr(entry, "wz_aes_strength", None) != _AES_256:
                raise AirisContainerError(f"{label}: the CSV inside is not AES-256 encrypted (WinZip AES): this is "
                                          "not the file as AIRIS sends it; download it again")
            if entry.file_size > self.max_csv_bytes:
                raise AirisContainerError(f"{label}: the CSV inside is {entry.file_size} bytes, over the limit of "
                                          f"{self.max_csv_bytes}: not an AIRIS 小型二輪 download")
            archive.setpassword(key.encode("utf-8"))
            try:
                with archive.open(entry) as stream:
                    total = 0
                    while True:
                        chunk = stream.read(CHUNK_BYTES)
                        if not chunk:
                            break
                        total += len(chunk)
                        if total > self.max_csv_bytes:
                            raise AirisContainerError(f"{label}: the CSV inside inflates past {self.max_csv_bytes} "
                                                      "bytes: damaged or not an AIRIS download")
                        yield chunk
            except RuntimeError as error:
                if "password" in str(error).lower():
                    raise AirisContainerError(f"{label}: the key does not open it: use the key published on the "
                                              "AIRIS site for this download (or download the file again if it is "
                                              "damaged)") from None
                raise
            except (pyzipper.BadZipFile, pyzipper.LargeZipFile, zlib.error, OSError, EOFError, ValueError) as error:
                if isinstance(error, AirisContainerError):
                    raise
                raise AirisContainerError(f"{label}: damaged (the ZIP's check failed: {type(error).__name__}): "
                                          "download it from AIRIS again") from None


def write_airis_zip(csv_data: bytes, key: str, *, name: str = "airis.csv") -> bytes:
    """An AIRIS-shaped download (for dummy data: tests, the demo, the benchmark): *csv_data* AES-256 zipped."""
    out = io.BytesIO()
    with pyzipper.AESZipFile(out, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(key.encode("utf-8"))
        archive.writestr(name, csv_data)
    return out.getvalue()
