"""The AIRIS container: AES-256 ZIP opened in memory; wrong key, damage, wrong contents are clear errors."""

from __future__ import annotations

import io

import pytest
import pyzipper

from kei_gateway.adapters.airis_zip import AirisContainerError, WinZipAesContainer, read_key, write_airis_zip

CSV = "登録番号_運輸支局,車台番号\r\n練馬,DMY-1\r\n".encode("cp932") * 50


def opened(data: bytes, key: str = "k3y", container: WinZipAesContainer | None = None) -> bytes:
    return b"".join((container or WinZipAesContainer()).csv_chunks(data, key, label="airis.zip"))


def error(data: bytes, key: str = "k3y", container: WinZipAesContainer | None = None) -> str:
    with pytest.raises(AirisContainerError) as raised:
        opened(data, key, container)
    return str(raised.value)


def test_when_the_key_is_right_then_the_csv_comes_out_in_memory() -> None:
    assert opened(write_airis_zip(CSV, "k3y")) == CSV


def test_when_the_key_is_wrong_then_the_error_says_to_use_the_published_key() -> None:
    assert "the key does not open it" in error(write_airis_zip(CSV, "k3y"), key="other")


@pytest.mark.parametrize("cut", [10, 200, -30])
def test_when_the_zip_is_damaged_then_the_error_says_to_download_it_again(cut: int) -> None:
    data = write_airis_zip(CSV, "k3y")
    damaged = data[:cut] if cut > 0 else data[:len(data) // 2] + bytes(10) + data[len(data) // 2 + 10:]
    message = error(damaged)
    assert message.startswith("airis.zip: ") and ("download" in message or "key does not open" in message)


def test_when_the_zip_holds_two_files_or_none_then_it_is_refused() -> None:
    out = io.BytesIO()
    with pyzipper.AESZipFile(out, "w", encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(b"k3y")
        archive.writestr("a.csv", CSV)
        archive.writestr("b.csv", CSV)
    assert "holds 2 CSV files and 0 other files" in error(out.getvalue())
    out = io.BytesIO()
    with pyzipper.AESZipFile(out, "w") as archive:
        pass
    assert "holds 0 CSV files" in error(out.getvalue())


def test_when_the_csv_is_not_encrypted_then_it_is_refused() -> None:
    out = io.BytesIO()
    with pyzipper.AESZipFile(out, "w") as archive:
        archive.writestr("a.csv", CSV)
    assert "not AES-256 encrypted" in error(out.getvalue())


def test_when_the_csv_inflates_past_the_limit_then_it_stops_there() -> None:
    message = error(write_airis_zip(CSV, "k3y"), container=WinZipAesContainer(max_csv_bytes=100))
    assert "over the limit of 100" in message


def test_when_a_key_file_has_one_line_then_that_is_the_key_else_a_clear_error() -> None:
    assert read_key("k3y-パス\r\n".encode(), label="a.key") == "k3y-パス"
    for data, reason in ((b"", "empty"), (b"a\nb\n", "2 lines"), (b"\xff\xfe", "not UTF-8"), (b"x" * 2000, "at most")):
        with pytest.raises(AirisContainerError, match=reason):
            read_key(data, label="a.key")
