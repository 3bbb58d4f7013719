"""The intranet spool (SPEC §4): which outbox entries are ready, which are refused, and moving them.

:func:`classify` is pure: it decides from a listing. The functions below it are the
filesystem adapter (blocking; call them through the blocking door).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from kei_gateway.adapters.durable import fsync_directory

__all__ = ["NAME_PATTERN", "ERRORS_SUFFIX", "Entry", "Refusal", "SpoolDecision", "classify", "list_entries", "MARKER_SUFFIX",
           "quarantine_entry", "write_errors_file", "entry_kind", "atomic_write", "write_durable", "publish", "free_name",
           "staged_name", "stage_for_inbox", "publish_staged", "stage_relays", "publish_relays", "discard_staged",
           "staged_relays", "parse_staged", "TAG_SEPARATOR", "staged_mtime",
           "ensure_directory", "SHARED_DIR_MODE", "QUARANTINE_DIR_MODE"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MARKER_SUFFIX = ".end"
TEMP_SUFFIX = ".tmp"
ERRORS_SUFFIX = ".errors.txt"

EntryKind = Literal["file", "symlink", "directory", "other"]


@dataclass(frozen=True)
class Entry:
    name: str
    kind: EntryKind


@dataclass(frozen=True)
class Refusal:
    name: str
    reason: str
    """A short reason label (also a bounded metric label): name, symlink, directory, not-regular."""
    detail: str


@dataclass(frozen=True)
class SpoolDecision:
    ready: list[str] = field(default_factory=list)
    """Data files to ingest now, in name order."""
    refused: list[Refusal] = field(default_factory=list)
    """Entries to quarantine without reading them."""
    markers: dict[str, str] = field(default_factory=dict)
    """Data file name → its marker file name (``ready = "marker"``), to remove after ingest."""


def _in_progress(name: str) -> bool:
    """A writer's temporary name: a dotfile or ``*.tmp`` (SPEC §4, ``ready = "rename"``)."""
    return name.startswith(".") or name.endswith(TEMP_SUFFIX)


def classify(entries: Iterable[Entry], ready: str) -> SpoolDecision:
    """Decide what to do with an outbox listing under the flow's ``ready`` mode ("rename" or "marker")."""
    by_name = {entry.name: entry for entry in entries}
    decision = SpoolDecision()
    for name in sorted(by_name):
        entry = by_name[name]
        if _in_progress(name):
            continue
        if not NAME_PATTERN.fullmatch(name):
            decision.refused.append(Refusal(name, "name", "the name must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}; "
                                                          "rename the file and write it again"))
            continue
        if entry.kind == "symlink":
            decision.refused.append(Refusal(name, "symlink", "symbolic links are never followed; write the file itself"))
            continue
        if entry.kind == "directory":
            decision.refused.append(Refusal(name, "directory", "directories are not transferred; write files only"))
            continue
        if entry.kind != "file":
            decision.refused.append(Refusal(name, "not-regular", "not a regular file (device, FIFO or socket)"))
            continue
        if ready == "marker":
            if name.endswith(MARKER_SUFFIX):
                continue  # a marker; its data file decides
            marker = name + MARKER_SUFFIX
            if marker in by_name and by_name[marker].kind == "file":
                decision.ready.append(name)
                decision.markers[name] = marker
            continue
        decision.ready.append(name)
    return decision


def entry_kind(mode: int) -> EntryKind:
    """What a directory entry of *mode* (from ``lstat``) is, as the spool classifies it."""
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def list_entries(directory: str) -> list[Entry]:
    """The directory's entries with their kind, never following a link."""
    entries = []
    with os.scandir(directory) as scan:
        for item in scan:
            try:
                mode = item.stat(follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue  # gone between listing and stat
            except OSError:
                mode = 0  # cannot even be stat'ed: refused as not regular, that entry only
            entries.append(Entry(item.name, entry_kind(mode)))
    return entries


SHARED_DIR_MODE = 0o2770
"""outbox/ and inbox/ directories: the service user and the spool group (the tax system) read and write;
setgid so files inherit the group."""
QUARANTINE_DIR_MODE = 0o2750
"""quarantine/ directories: the tax system reads the errors files."""


def ensure_directory(path: str, mode: int) -> None:
    """Create *path* (and parents) with exactly *mode* if it is missing; leave an existing one alone.

    ``mkdir`` applies the umask (0077 under the unit) and ignores the setgid bit, so
    a directory the daemon creates itself gets its mode with ``chmod``. Directories
    made by ``scripts/install`` (or an administrator) keep theirs.
    """
    if os.path.isdir(path):
        return
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)


def write_durable(path: str, chunks: Iterable[bytes], mode: int = 0o640) -> int:
    """Write *chunks* to *path* (replacing it), fsync the file and its directory. Returns the size.

    The building block of :func:`atomic_write`; on its own it stages a file under a
    name readers skip (a dotfile) that a later :func:`publish` renames into place.
    """
    size = _write_synced(path, chunks, mode)
    fsync_directory(os.path.dirname(path))
    return size


def publish(staged: str, path: str) -> None:
    """Rename the durable *staged* file to *path* (same directory) and make the rename durable."""
    os.replace(staged, path)
    fsync_directory(os.path.dirname(path))


def atomic_write(path: str, chunks: Iterable[bytes], mode: int = 0o640) -> int:
    """Write *chunks* to *path* atomically: temp file, fsync, rename, fsync the directory. Returns the size."""
    directory = os.path.dirname(path)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    size = write_durable(temporary, chunks, mode)
    publish(temporary, path)
    return size


def free_name(directory: str, name: str) -> str:
    """*name*, or ``name.2``, ``name.3`` … whichever is free in *directory* (with its ``.errors.txt``)."""
    candidate, n = name, 1
    while os.path.lexists(os.path.join(directory, candidate)) or os.path.lexists(
            os.path.join(directory, candidate + ERRORS_SUFFIX)):
        n += 1
        candidate = f"{name}.{n}"
    return candidate


def quarantine_entry(source_dir: str, name: str, quarantine_dir: str, safe_name: str | None = None) -> str:
    """Move an outbox entry into *quarantine_dir* (never following it); return its name there."""
    ensure_directory(quarantine_dir, QUARANTINE_DIR_MODE)
    target = free_name(quarantine_dir, safe_name or name)
    os.rename(os.path.join(source_dir, name), os.path.join(quarantine_dir, target))
    fsync_directory(quarantine_dir)
    fsync_directory(source_dir)
    return target


def write_errors_file(quarantine_dir: str, name: str, lines: Iterable[str]) -> str:
    """``name.errors.txt`` next to a quarantined file: UTF-8, one error a line (SPEC §4)."""
    path = os.path.join(quarantine_dir, name + ERRORS_SUFFIX)
    atomic_write(path, ((line.rstrip("\n") + "\n").encode("utf-8") for line in lines))
    return path


def staged_name(name: str, tag: int | None = None) -> str:
    """The dotfile a relayed file is written as before it is renamed into the inbox (readers skip dotfiles).

    *tag*: the fencing token of the relay that stages it (two nodes, SPEC §14), ``.name~TAG.part``: two relays
    of one file (one of them stalled past its lease) never write or remove each other's staged copy, and the
    restart rule publishes only the one whose relay committed."""
    return f".{name}.part" if tag is None else f".{name}{TAG_SEPARATOR}{tag}.part"


TAG_SEPARATOR = "~"


def parse_staged(entry: str) -> tuple[str, int | None, bool] | None:
    """``(name, tag, is_marker)`` of a staged dotfile of :func:`staged_name`, or None if *entry* is not one."""
    if not (entry.startswith(".") and entry.endswith(".part")) or len(entry) <= len("..part"):
        return None
    name = entry[1:-len(".part")]
    tag: int | None = None
    stem, separator, suffix = name.rpartition(TAG_SEPARATOR)
    if separator and suffix.isdigit() and stem:
        name, tag = stem, int(suffix)
    marker = name.endswith(MARKER_SUFFIX)
    return name.removesuffix(MARKER_SUFFIX), tag, marker


def stage_for_inbox(inbox_dir: str, name: str, chunks: Iterable[bytes], mode: int = 0o640) -> int:
    """Step 1 of an exactly-once relay: *chunks* durable as ``inbox_dir/.name.part``. Returns the size.

    Then the caller records the relay decision (the name) in the ledger, then calls
    :func:`publish_staged`. After a crash: no decision recorded → stage again; decision
    recorded → :func:`publish_staged` again, which renames the staged file if it is still
    there and writes nothing if it is gone (renamed already — and perhaps taken by the
    tax system, when writing it again would deliver it twice).
    """
    ensure_directory(inbox_dir, SHARED_DIR_MODE)
    return write_durable(os.path.join(inbox_dir, staged_name(name)), chunks, mode)


def publish_staged(inbox_dir: str, name: str, marker: bool) -> None:
    """Step 3 (safe to repeat): rename the staged file into place if it is still staged; then ``name.end``."""
    staged = os.path.join(inbox_dir, staged_name(name))
    final = os.path.join(inbox_dir, name)
    if os.path.exists(staged):
        publish(staged, final)
    if marker and os.path.exists(final) and not os.path.exists(final + MARKER_SUFFIX):
        atomic_write(final + MARKER_SUFFIX, [])


# --- the relay of payment results: several files staged, decided in one commit, published (issue 16) ---


def _staged_marker(name: str, tag: int | None = None) -> str:
    return staged_name(name + MARKER_SUFFIX, tag)


def _write_synced(path: str, chunks: Iterable[bytes], mode: int) -> int:
    """*chunks* into *path* (replaced), the file fsynced; its directory entry is the caller's to fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    size = 0
    try:
        os.fchmod(fd, mode)  # the umask (0077 under the unit) must not hide the file from the tax system
        for chunk in chunks:
            os.write(fd, chunk)
            size += len(chunk)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return size


def stage_relays(inbox_dir: str, files: Iterable[tuple[str, Iterable[bytes]]], marker: bool,
                 mode: int = 0o640, tags: Mapping[str, int | None] | None = None) -> int:
    """Stage each ``(name, chunks)`` as ``.name.part`` (and, with *marker*, an empty ``.name.end.part``), every
    file fsynced, then the directory once: one directory fsync for the whole group. Returns the bytes staged.

    The relay then commits its decision (names and ``DONE``) and calls :func:`publish_relays`; after a
    crash, a staged file of a transfer that is ``DONE`` under that name is published
    (:func:`staged_relays`), one of a transfer not yet decided is staged again. *tags*: each name's relay
    token (:func:`staged_name`), when it relays under a lease.
    """
    ensure_directory(inbox_dir, SHARED_DIR_MODE)
    tags = tags or {}
    size = 0
    for name, chunks in files:
        size += _write_synced(os.path.join(inbox_dir, staged_name(name, tags.get(name))), chunks, mode)
        if marker:
            _write_synced(os.path.join(inbox_dir, _staged_marker(name, tags.get(name))), (), mode)
    fsync_directory(inbox_dir)
    return size


def publish_relays(inbox_dir: str, names: Iterable[str], tags: Mapping[str, int | None] | None = None) -> None:
    """Rename each staged ``.name.part`` still there to ``name``, fsync the directory; then the same for the
    staged markers (``name.end`` appears only once its data file is durably in place). Safe to repeat and to
    run twice at once (a staged file already renamed by the other is skipped): a staged file that is gone was
    published — perhaps taken by the tax system since — and is never written again. *tags*: as staged."""
    names = list(names)
    tags = tags or {}
    renamed = False
    for name in names:
        renamed |= _rename_if_staged(os.path.join(inbox_dir, staged_name(name, tags.get(name))),
                                     os.path.join(inbox_dir, name))
    markers = [name for name in names
               if os.path.exists(os.path.join(inbox_dir, _staged_marker(name, tags.get(name))))]
    if renamed or markers:
        fsync_directory(inbox_dir)
    if markers:
        for name in markers:
            _rename_if_staged(os.path.join(inbox_dir, _staged_marker(name, tags.get(name))),
                              os.path.join(inbox_dir, name + MARKER_SUFFIX))
        fsync_directory(inbox_dir)


def _rename_if_staged(staged: str, final: str) -> bool:
    try:
        os.rename(staged, final)
    except FileNotFoundError:
        return False  # published already (by a recovery running at the same time, or before a crash)
    return True


def discard_staged(inbox_dir: str, name: str, tag: int | None = None) -> None:
    """Remove what a relay cut off before its decision (or fenced) left staged for *name* under *tag*
    (nothing if none): only that relay's copy."""
    for staged in (staged_name(name, tag), _staged_marker(name, tag)):
        try:
            os.unlink(os.path.join(inbox_dir, staged))
        except FileNotFoundError:
            pass


def staged_mtime(inbox_dir: str, name: str) -> float | None:
    """When *name*'s staged files were last written (the newest of ``.name.part`` and its marker), or None if gone."""
    times = []
    for staged in (staged_name(name), _staged_marker(name)):
        try:
            times.append(os.stat(os.path.join(inbox_dir, staged)).st_mtime)
        except FileNotFoundError:
            pass
    return max(times, default=None)


def staged_relays(inbox_dir: str) -> list[tuple[str, int | None]]:
    """The staged files in *inbox_dir* (data ``.name[~TAG].part`` or marker ``.name.end[~TAG].part``) as
    ``(name, tag)``, sorted: one entry for a file's data and marker."""
    try:
        entries = os.listdir(inbox_dir)
    except FileNotFoundError:
        return []
    staged = set()
    for entry in entries:
        parsed = parse_staged(entry)
        if parsed is not None:
            staged.add(parsed[:2])
    return sorted(staged, key=lambda item: (item[0], -1 if item[1] is None else item[1]))
