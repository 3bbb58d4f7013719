"""``kei-gateway airis reconcile``: results written atomically, every bad input exit 3 with nothing written."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from kei_gateway.cli import exitcodes
from kei_gateway.adapters.airis_zip import write_airis_zip
from kei_gateway.cli.main import main
from kei_gateway.layouts import ValidationOptions, render_records, validate_bytes
from kei_gateway.layouts.airis import (
    AIRIS_COLUMNS, AIRIS_RECONCILE, TAX_REGISTER_2W, AirisCase, airis_csv_bytes, generate_airis_case,
)

KEY = "dummy-airis-key-01"
PLANT = {"02": 2, "03": 1, "04": 3, "05": 2, "06": 1, "07": 2, "08": 2}


def inputs(tmp_path: Path, case: AirisCase, *, csv: bytes | None = None, register: bytes | None = None,
           key: str = KEY) -> list[str]:
    (tmp_path / "airis.zip").write_bytes(write_airis_zip(csv if csv is not None else airis_csv_bytes(case.airis), KEY))
    (tmp_path / "airis.zip.key").write_text(key + "\r\n", encoding="utf-8")
    (tmp_path / "register.dat").write_bytes(
        register if register is not None else b"".join(render_records(TAX_REGISTER_2W, case.register)))
    output = tmp_path / "out"
    output.mkdir(mode=0o700, exist_ok=True)
    return ["-c", str(tmp_path / "absent.toml"), "airis", "reconcile", "--airis", str(tmp_path / "airis.zip"), "--key", str(tmp_path / "airis.zip.key"),
            "--register", str(tmp_path / "register.dat"), "--output", str(output), "--lg-code", "131202"]


def test_when_the_inputs_are_valid_then_dat_csv_and_txt_appear_with_the_planted_counts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = generate_airis_case(40, PLANT, seed=3, variants={"degenerate": 2})
    case.airis[0]["owner_name"] = "=HYPERLINK(1)"  # a formula must reach Excel as text
    assert main(inputs(tmp_path, case)) == exitcodes.OK
    names = sorted(os.listdir(tmp_path / "out"))
    assert [name.split(".")[-1] for name in names] == ["csv", "dat", "txt"]
    assert all(name.startswith("131202_airis-reconcile_") for name in names)
    dat = (tmp_path / "out" / names[1]).read_bytes()
    report = validate_bytes(dat, AIRIS_RECONCILE, ValidationOptions(today=datetime.date(2030, 1, 1)))
    assert report.valid, [error.message() for error in report.errors]
    assert "髙".encode("cp932") not in dat and "高".encode("cp932") in dat  # AIRIS 外字 written by 縮退
    csv = (tmp_path / "out" / names[0]).read_bytes()
    assert csv.startswith(b"\xef\xbb\xbf") and b"\r\n" in csv and b"'=HYPERLINK(1)" in csv
    text = (tmp_path / "out" / names[2]).read_text(encoding="utf-8")
    assert "SHA-256" in text and "07 車台番号下7桁のみ一致" in text
    assert all(mode & 0o077 == 0 for mode in (os.stat(tmp_path / "out" / n).st_mode for n in names))
    err = capsys.readouterr().err
    assert all(str(vehicle["owner_name"]) not in err for vehicle in case.register)


def test_when_the_planted_case_is_run_then_the_dat_has_exactly_the_expected_rows_per_category(tmp_path: Path) -> None:
    case = generate_airis_case(60, PLANT, seed=11)
    assert main(inputs(tmp_path, case)) == exitcodes.OK
    (dat,) = (tmp_path / "out").glob("*.dat")
    data = dat.read_bytes()
    categories = [data[i:i + 2].decode() for i in range(0, len(data), AIRIS_RECONCILE.record_length)]
    assert {code: categories.count(code) for code in case.expected} == case.expected


def _bad_register(case: AirisCase) -> bytes:
    data = b"".join(render_records(TAX_REGISTER_2W, case.register))
    return data[:229 * 2] + data[229 * 2 + 1:]  # record 3 one byte short


def _zip_of(files: dict[str, bytes]) -> bytes:
    import io

    import pyzipper

    out = io.BytesIO()
    with pyzipper.AESZipFile(out, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(KEY.encode())
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def _with_bad_byte(case: AirisCase) -> bytes:
    """The CSV with bytes CP932 does not have (0x85 0x40, an unassigned row) in the 所有者氏名 of row 3."""
    lines = airis_csv_bytes(case.airis).split(b"\r\n")
    cells = lines[2].split(b",")
    cells[5] = cells[5][:2] + b"\x85\x40" + cells[5][2:]
    lines[2] = b",".join(cells)
    return b"\r\n".join(lines)


def _register_with(case: AirisCase, record: int, **values: object) -> bytes:
    register = [dict(r) for r in case.register]
    register[record - 1].update(values)
    return b"".join(render_records(TAX_REGISTER_2W, register))


@pytest.mark.parametrize(("change", "expected"), [
    ({"key": "wrong"}, ["airis.zip: the key does not open it"]),
    ({"key_lines": 2}, ["airis.zip.key: 2 lines"]),
    ({"zip": {"a.csv": b"x", "b.csv": b"y"}}, ["airis.zip: holds 2 CSV files"]),
    ({"zip": {"readme.txt": b"x"}}, ["airis.zip: holds 0 CSV files and 1 other files"]),
    ({"csv": b""}, ["airis.zip (its CSV): file: empty: no header row"]),
    ({"csv_header": [c.name for c in AIRIS_COLUMNS if c.key != "owner_address"]},
     ["airis.zip (its CSV): row 1: column 所有者住所 missing"]),
    ({"csv_header": [c.name for c in AIRIS_COLUMNS] + ["備考"]},
     ["airis.zip (its CSV): row 1: column '備考' is not in the v1 header"]),
    ({"csv_utf8": True}, ["airis.zip (its CSV): row 1: ", "): not valid CP932", "it is valid UTF-8"]),
    ({"csv_bad_byte": True}, ["airis.zip (its CSV): row 3: 所有者氏名 (owner_name): not valid CP932"]),
    ({"csv_cell": ("registered_on", "20251341")},
     ["airis.zip (its CSV): row 5: 登録年月日 (registered_on): does not follow the rule"]),
    ({"register": b""}, ["register.dat: file", "the file is empty"]),
    ({"register": "short"}, ["register.dat: record 3", "229 bytes including CR LF"]),
    ({"register": "vehicle_type"}, ["register.dat: record 2", "車種コード (vehicle_type)"]),
])
def test_when_an_input_is_invalid_then_exit_3_names_the_place_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, object], expected: list[str]) -> None:
    """Each bad input of issue 14: exit 3, the file, row or record and column or field named, no output at all."""
    case = generate_airis_case(10, seed=5)
    csv = change.get("csv")
    if "csv_header" in change:
        csv = airis_csv_bytes(case.airis, header=change["csv_header"])  # type: ignore[arg-type]
    if change.get("csv_utf8"):
        csv = airis_csv_bytes(case.airis).decode("cp932").encode("utf-8")
    if change.get("csv_bad_byte"):
        csv = _with_bad_byte(case)
    if "csv_cell" in change:
        key, value = change["csv_cell"]  # type: ignore[misc]
        rows = [dict(row) for row in case.airis]
        rows[3][key] = value
        csv = airis_csv_bytes(rows)
    register = change.get("register")
    if register == "short":
        register = _bad_register(case)
    elif register == "vehicle_type":
        register = _register_with(case, 2, vehicle_type="12")
    argv = inputs(tmp_path, case, csv=csv, register=register, key=str(change.get("key", KEY)))  # type: ignore[arg-type]
    if "zip" in change:
        (tmp_path / "airis.zip").write_bytes(_zip_of(change["zip"]))  # type: ignore[arg-type]
    if "key_lines" in change:
        (tmp_path / "airis.zip.key").write_text(KEY + "\n" + KEY + "\n", encoding="utf-8")
    assert main(argv) == exitcodes.INVALID
    captured = capsys.readouterr()
    printed = captured.out.replace(str(tmp_path) + "/", "")
    for words in expected:
        assert words in printed, printed
    assert "nothing was written" in captured.err
    assert os.listdir(tmp_path / "out") == []


def test_when_writing_a_result_fails_half_way_then_nothing_is_left_in_the_output_and_exit_is_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from kei_gateway.flows.airis_reconcile import Reconciliation

    def csv_then_full_disk(self: Reconciliation) -> object:
        yield b"\xef\xbb\xbf\xe7\xaa\x81\xe5\x90\x88"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Reconciliation, "csv_chunks", csv_then_full_disk)
    argv = inputs(tmp_path, generate_airis_case(30, PLANT, seed=2))
    assert main(argv) == exitcodes.FAILED
    assert "nothing was left half written" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == []


def test_when_the_zip_is_damaged_then_exit_3_says_download_again(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    argv = inputs(tmp_path, generate_airis_case(10, seed=5))
    data = (tmp_path / "airis.zip").read_bytes()
    (tmp_path / "airis.zip").write_bytes(data[:len(data) // 2])
    assert main(argv) == exitcodes.INVALID
    printed = capsys.readouterr().out
    assert f"{tmp_path}/airis.zip: " in printed and "download it from AIRIS again" in printed
    assert os.listdir(tmp_path / "out") == []


def test_when_the_output_directory_is_readable_by_others_then_it_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = inputs(tmp_path, generate_airis_case(5, seed=1))
    os.chmod(tmp_path / "out", 0o755)
    assert main(argv) == exitcodes.USAGE
    assert "readable by group or others" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == []


def test_when_results_are_rendered_by_the_fast_path_then_they_equal_the_layout_engines_rendering() -> None:
    from kei_gateway.flows.airis_reconcile import reconcile, render_result
    from kei_gateway.layouts import render_record

    case = generate_airis_case(50, PLANT, seed=8, variants={"degenerate": 3, "width": 3})
    result = reconcile(airis_zip=write_airis_zip(airis_csv_bytes(case.airis), KEY), key_file=KEY.encode(),
                       register=b"".join(render_records(TAX_REGISTER_2W, case.register)), lg_code="131202",
                       at=datetime.datetime(2025, 7, 1, tzinfo=datetime.timezone.utc))
    records = [result._record(row) for row in result.rows]
    assert [render_result(record) for record in records] == [render_record(AIRIS_RECONCILE, r) for r in records]
