"""Pure helpers of the WebDAV client: multistatus parsing, ``Retry-After``, URLs. No I/O."""

from __future__ import annotations

import datetime
import email.utils
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from urllib.parse import quote, unquote, urljoin, urlsplit

__all__ = ["RemoteEntry", "parse_multistatus", "parse_retry_after", "file_url", "PROPFIND_BODY", "MultistatusError"]

DAV = "{DAV:}"

PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop>'
    b"<D:resourcetype/><D:getcontentlength/><D:getetag/><D:getlastmodified/>"
    b"</D:prop></D:propfind>\n"
)


@dataclass(frozen=True)
class RemoteEntry:
    """A file in a peer's directory, from ``PROPFIND Depth: 1``. ``None`` where the server gave no value."""

    name: str
    size: int | None
    etag: str | None
    last_modified: datetime.datetime | None


class MultistatusError(ValueError):
    """The PROPFIND answer is not a usable ``207 Multi-Status`` document."""


def file_url(dir_url: str, name: str) -> str:
    """The URL of *name* inside the directory *dir_url* (which ends in ``/``)."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a plain file name: {name!r}")
    return urljoin(dir_url, quote(name))


def _path(href: str) -> str:
    return unquote(urlsplit(href.strip()).path).rstrip("/")


def _ok(propstat: ElementTree.Element) -> bool:
    status = propstat.findtext(f"{DAV}status") or ""
    parts = status.split()
    return len(parts) >= 2 and parts[1] == "200"


def parse_multistatus(body: bytes, directory_url: str) -> list[RemoteEntry]:
    """The files (not collections, not the directory itself) of a ``Depth: 1`` multistatus.

    Only ``propstat`` blocks with status 200 count (Apache adds a 404 block for
    properties it does not have). Sorted by name.
    """
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as error:
        raise MultistatusError(f"PROPFIND answer is not XML: {error}") from None
    if root.tag != f"{DAV}multistatus":
        raise MultistatusError(f"PROPFIND answer is {root.tag}, not DAV: multistatus")
    directory = _path(directory_url)
    entries: list[RemoteEntry] = []
    for response in root.findall(f"{DAV}response"):
        href = response.findtext(f"{DAV}href")
        if href is None:
            continue
        path = _path(href)
        if path == directory or not path:
            continue
        props: dict[str, ElementTree.Element] = {}
        for propstat in response.findall(f"{DAV}propstat"):
            if not _ok(propstat):
                continue
            for prop in propstat.findall(f"{DAV}prop"):
                for child in prop:
                    props[child.tag] = child
        resource_type = props.get(f"{DAV}resourcetype")
        if resource_type is not None and resource_type.find(f"{DAV}collection") is not None:
            continue
        if href.strip().endswith("/") and resource_type is None:
            continue
        parent, _, name = path.rpartition("/")
        if parent != directory:
            continue  # not a direct child: a server answering beyond Depth 1
        size_text = (props[f"{DAV}getcontentlength"].text or "").strip() if f"{DAV}getcontentlength" in props else ""
        etag = (props[f"{DAV}getetag"].text or "").strip() if f"{DAV}getetag" in props else ""
        modified_text = (props[f"{DAV}getlastmodified"].text or "").strip() if f"{DAV}getlastmodified" in props else ""
        modified: datetime.datetime | None = None
        if modified_text:
            try:
                modified = email.utils.parsedate_to_datetime(modified_text)
            except (TypeError, ValueError):
                modified = None
        entries.append(RemoteEntry(
            name=name,
            size=int(size_text) if size_text.isdigit() else None,
            etag=etag or None,
            last_modified=modified,
        ))
    return sorted(entries, key=lambda entry: entry.name)


def parse_retry_after(value: str | bytes | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).

    *now* is the current Unix time (the caller's clock). A date in the past gives
    0; anything unparseable gives ``None``.
    """
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now)
