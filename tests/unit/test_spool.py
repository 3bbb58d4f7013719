"""The outbox: ready files, writers' temporary names, and entries refused into quarantine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kei_gateway.adapters.spool import (
    Entry,
    atomic_write,
    classify,
    list_entries,
    quarantine_entry,
    write_errors_file,
)


def names(decision_refused: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {r.name: r.reason for r in decision_refused}


def test_when_ready_is_rename_then_finished_names_are_taken_and_temporary_ones_wait() -> None:
    decision = classify([Entry("b.dat", "file"), Entry("a.dat", "file"), Entry("c.dat.tmp", "file"),
                         Entry(".d.dat", "file")], "rename")
    assert decision.ready == ["a.dat", "b.dat"] and decision.refused == []


def test_when_ready_is_marker_then_only_files_with_their_end_marker_are_taken() -> None:
    decision = classify([Entry("a.dat", "file"), Entry("a.dat.end", "file"), Entry("b.dat", "file"),
                         Entry("orphan.end", "file")], "marker")
    assert decision.ready == ["a.dat"]
    assert decision.markers == {"a.dat": "a.dat.end"}


def test_when_entries_are_bad_names_links_directories_or_devices_then_each_is_refused_with_its_reason() -> None:
    decision = classify([Entry("ok.dat", "file"), Entry("spa ce.dat", "file"), Entry("納付.dat", "file"),
                         Entry("-dash.dat", "file"), Entry("link.dat", "symlink"), Entry("dir", "directory"),
                         Entry("fifo", "other"), Entry("x" * 129, "file")], "rename")
    assert decision.ready == ["ok.dat"]
    assert names(decision.refused) == {"spa ce.dat": "name", "納付.dat": "name", "-dash.dat": "name",
                                       "link.dat": "symlink", "dir": "directory", "fifo": "not-regular",
                                       "x" * 129: "name"}


def test_when_listing_a_real_directory_then_links_are_seen_as_links_and_not_followed(tmp_path: Path) -> None:
    (tmp_path / "real.dat").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    os.symlink("/etc/passwd", tmp_path / "link.dat")
    os.mkfifo(tmp_path / "pipe")
    kinds = {e.name: e.kind for e in list_entries(str(tmp_path))}
    assert kinds == {"real.dat": "file", "sub": "directory", "link.dat": "symlink", "pipe": "other"}


def test_when_an_entry_is_quarantined_then_it_moves_unfollowed_with_an_errors_file_and_never_overwrites(
        tmp_path: Path) -> None:
    outbox, quarantine = tmp_path / "outbox", tmp_path / "quarantine"
    outbox.mkdir()
    os.symlink("/etc/passwd", outbox / "link.dat")
    moved = quarantine_entry(str(outbox), "link.dat", str(quarantine))
    assert moved == "link.dat" and os.path.islink(quarantine / "link.dat")
    write_errors_file(str(quarantine), moved, ["symbolic links are never followed"])
    assert (quarantine / "link.dat.errors.txt").read_text(encoding="utf-8") == "symbolic links are never followed\n"
    (outbox / "link.dat").write_bytes(b"second")
    assert quarantine_entry(str(outbox), "link.dat", str(quarantine)) == "link.dat.2"
    assert not (outbox / "link.dat").exists()


def test_when_writing_atomically_then_the_file_appears_whole_with_its_mode_and_no_temp_is_left(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        size = atomic_write(str(tmp_path / "r.dat"), [b"ab", b"cd"], mode=0o640)
    finally:
        os.umask(old)
    assert size == 4 and (tmp_path / "r.dat").read_bytes() == b"abcd"
    assert (tmp_path / "r.dat").stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["r.dat"]


def test_when_a_write_fails_midway_then_nothing_appears_under_the_name(tmp_path: Path) -> None:
    def broken() -> object:
        yield b"partial"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(tmp_path / "r.dat"), broken())  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_when_the_daemon_creates_a_spool_directory_then_it_gets_its_mode_despite_the_umask(tmp_path: Path) -> None:
    from kei_gateway.adapters.spool import SHARED_DIR_MODE, ensure_directory

    old = os.umask(0o077)
    try:
        ensure_directory(str(tmp_path / "outbox" / "jnks"), SHARED_DIR_MODE)
    finally:
        os.umask(old)
    assert (tmp_path / "outbox" / "jnks").stat().st_mode & 0o7777 == 0o2770
    os.chmod(tmp_path / "outbox" / "jnks", 0o2700)
    ensure_directory(str(tmp_path / "outbox" / "jnks"), SHARED_DIR_MODE)
    assert (tmp_path / "outbox" / "jnks").stat().st_mode & 0o7777 == 0o2700, "an existing directory keeps its mode"


def test_when_relays_are_staged_then_published_then_markers_follow_their_data_and_a_repeat_writes_nothing(
        tmp_path: Path) -> None:
    """Issue 16: a group's files staged (one directory fsync), then renamed; publishing again is harmless."""
    from kei_gateway.adapters.spool import discard_staged, publish_relays, stage_relays, staged_relays

    inbox = tmp_path / "inbox"
    assert stage_relays(str(inbox), [("a.dat", [b"aa", b"a"]), ("b.dat", [b"b"])], marker=True) == 4
    assert sorted(p.name for p in inbox.iterdir()) == [".a.dat.end.part", ".a.dat.part", ".b.dat.end.part",
                                                       ".b.dat.part"]
    assert staged_relays(str(inbox)) == [("a.dat", None), ("b.dat", None)]
    publish_relays(str(inbox), ["a.dat"])
    assert sorted(p.name for p in inbox.iterdir()) == [".b.dat.end.part", ".b.dat.part", "a.dat", "a.dat.end"]
    assert (inbox / "a.dat").read_bytes() == b"aaa" and (inbox / "a.dat").stat().st_mode & 0o777 == 0o640
    (inbox / "a.dat").unlink()  # taken by the tax system
    (inbox / "a.dat.end").unlink()
    publish_relays(str(inbox), ["a.dat"])  # again (a recovery): nothing is written again
    discard_staged(str(inbox), "b.dat")
    discard_staged(str(inbox), "b.dat")
    assert list(inbox.iterdir()) == [] and staged_relays(str(inbox)) == []
    assert staged_relays(str(tmp_path / "missing")) == []


def test_when_two_relays_stage_one_file_under_their_tokens_then_each_publishes_or_discards_only_its_own(
        tmp_path: Path) -> None:
    """Issue 15: two nodes relaying one received file (one stalled past its lease) stage it under their own
    tokens; a discard or a publish touches only the copy it names, and the listing tells them apart."""
    from kei_gateway.adapters.spool import discard_staged, parse_staged, publish_relays, stage_relays, \
        staged_name, staged_relays

    inbox = tmp_path / "inbox"
    stage_relays(str(inbox), [("a.dat", [b"first"])], marker=True, tags={"a.dat": 1})
    stage_relays(str(inbox), [("a.dat", [b"second"])], marker=True, tags={"a.dat": 2})
    assert sorted(p.name for p in inbox.iterdir()) == [".a.dat.end~1.part", ".a.dat.end~2.part", ".a.dat~1.part",
                                                       ".a.dat~2.part"]
    assert staged_relays(str(inbox)) == [("a.dat", 1), ("a.dat", 2)]
    discard_staged(str(inbox), "a.dat", 1)  # the fenced relay removes its own copy only
    publish_relays(str(inbox), ["a.dat"], {"a.dat": 2})
    assert sorted(p.name for p in inbox.iterdir()) == ["a.dat", "a.dat.end"]
    assert (inbox / "a.dat").read_bytes() == b"second"
    assert parse_staged(staged_name("x~y.dat", 7)) == ("x~y.dat", 7, False)
    assert parse_staged(".x~y.dat.part") == ("x~y.dat", None, False)
    assert parse_staged(".a.dat.end.part") == ("a.dat", None, True)
    assert parse_staged("a.dat") is None and parse_staged("..part") is None
