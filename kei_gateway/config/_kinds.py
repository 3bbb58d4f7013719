"""Value kinds of configuration settings: parse a TOML value, render it back, describe it.

Each kind turns a raw TOML value into the typed value the daemon uses, or raises
:class:`ValueError` with a message that says what is wrong and what to write instead.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kei_gateway.layouts.checkdigits import lg_code_check_digit

__all__ = [
    "Kind", "Text", "Integer", "Boolean", "Choice", "Duration", "Size", "TimeOfDay", "Address",
    "CidrList", "Url", "DatabaseUrl", "AbsolutePath", "RelativeDir", "FileRef", "FileRefList", "Pins",
    "LgCode", "HostPort", "toml_literal", "parse_duration", "format_duration", "parse_size", "format_size",
]


class Kind:
    """How one setting's value is written in TOML and what it becomes."""

    description = "value"

    def parse(self, raw: Any) -> Any:
        raise NotImplementedError

    def render(self, value: Any) -> str:
        """The TOML text for *value* (a parsed default or an example)."""
        return toml_literal(value)


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def _expect(raw: Any, kind: type | tuple[type, ...], what: str) -> None:
    # bool is an int in Python; TOML keeps them apart, so do we.
    if isinstance(raw, bool) and kind is not bool:
        raise ValueError(f"expected {what}, got a boolean")
    if not isinstance(raw, kind):
        raise ValueError(f"expected {what}, got {_toml_type(raw)}")


def _toml_type(raw: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(raw), type(raw).__name__)


@dataclass(frozen=True)
class Text(Kind):
    description: str = "string"
    pattern: str | None = None
    hint: str = ""

    def parse(self, raw: Any) -> str:
        _expect(raw, str, "a string")
        if self.pattern is not None and not re.fullmatch(self.pattern, raw):
            raise ValueError(f"{raw!r} is not valid{': ' + self.hint if self.hint else ''}")
        return str(raw)


@dataclass(frozen=True)
class Integer(Kind):
    minimum: int = 0
    maximum: int | None = None
    description: str = "integer"

    def parse(self, raw: Any) -> int:
        _expect(raw, int, "an integer")
        if raw < self.minimum or (self.maximum is not None and raw > self.maximum):
            upper = "" if self.maximum is None else f" and at most {self.maximum}"
            raise ValueError(f"{raw} is out of range: use at least {self.minimum}{upper}")
        return int(raw)


@dataclass(frozen=True)
class Boolean(Kind):
    description: str = "boolean (true or false)"

    def parse(self, raw: Any) -> bool:
        _expect(raw, bool, "true or false")
        return bool(raw)


@dataclass(frozen=True)
class Choice(Kind):
    choices: tuple[str, ...] = ()

    @property
    def description(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(f'"{c}"' for c in self.choices)

    def parse(self, raw: Any) -> str:
        _expect(raw, str, "a string")
        if raw not in self.choices:
            raise ValueError(f"{raw!r} is not allowed: use {self.description}")
        return str(raw)


_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``"30s"``, ``"5m"``, ``"1h"``, ``"7d"``, ``"1h30m"`` → seconds."""
    position, total = 0, 0.0
    text = text.strip()
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match["number"]) * _UNIT_SECONDS[match["unit"]]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"{text!r} is not a duration: write a number and a unit, "
                         f'e.g. "30s", "5m", "1h", "7d" (units ms, s, m, h, d)')
    return total


def format_duration(seconds: float) -> str:
    """Seconds → the largest exact unit, e.g. ``86400`` → ``"1d"``."""
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"


MAX_DURATION = 3660 * 86400.0
"""The longest duration any setting takes: 3660 days (ten years, more than the 5-year ledger retention), so
every schedule and retention computed from one stays a valid date."""


@dataclass(frozen=True)
class Duration(Kind):
    minimum: float = 0.0
    maximum: float = MAX_DURATION

    @property
    def description(self) -> str:  # type: ignore[override]
        return f'duration ("30s", "5m", "1h", "7d"; at most "{format_duration(self.maximum)}")'

    def parse(self, raw: Any) -> float:
        _expect(raw, str, 'a duration string such as "30s"')
        seconds = parse_duration(raw)
        if seconds < self.minimum:
            raise ValueError(f"{raw!r} is too short: use at least {format_duration(self.minimum)}")
        if not seconds <= self.maximum:  # also NaN and inf
            ten_years = " (ten years)" if self.maximum == MAX_DURATION else ""
            raise ValueError(f"{raw!r} is too long: use at most {format_duration(self.maximum)}{ten_years}")
        return seconds

    def render(self, value: Any) -> str:
        return toml_literal(format_duration(value))


_SIZE = re.compile(r"(?P<number>\d{1,15})\s*(?P<unit>B|KiB|MiB|GiB|TiB)")
_UNIT_BYTES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def parse_size(text: str) -> int:
    """``"512KiB"``, ``"2GiB"``, ``"100B"`` → bytes (binary units only: a size is never ambiguous)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size: write a whole number and a unit, "
                         f'e.g. "512KiB", "256MiB", "2GiB" (units B, KiB, MiB, GiB, TiB)')
    return int(match["number"]) * _UNIT_BYTES[match["unit"]]


def format_size(size: int) -> str:
    """Bytes → the largest exact binary unit, e.g. ``2 << 30`` → ``"2GiB"``."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if size >= _UNIT_BYTES[unit] and size % _UNIT_BYTES[unit] == 0:
            return f"{size // _UNIT_BYTES[unit]}{unit}"
    return f"{size}B"


@dataclass(frozen=True)
class Size(Kind):
    """A number of bytes written with a binary unit, between *minimum* and *maximum*."""

    minimum: int = 1
    maximum: int = 1 << 40

    @property
    def description(self) -> str:  # type: ignore[override]
        return (f'size ("512KiB", "2GiB"; units B, KiB, MiB, GiB, TiB; from "{format_size(self.minimum)}" '
                f'to "{format_size(self.maximum)}")')

    def parse(self, raw: Any) -> int:
        _expect(raw, str, 'a size string such as "2GiB"')
        size = parse_size(raw)
        if size < self.minimum:
            raise ValueError(f"{raw!r} is too small: use at least {format_size(self.minimum)}")
        if size > self.maximum:
            raise ValueError(f"{raw!r} is too large: use at most {format_size(self.maximum)}")
        return size

    def render(self, value: Any) -> str:
        return toml_literal(format_size(value))


@dataclass(frozen=True)
class TimeOfDay(Kind):
    description: str = 'local time "HH:MM"'

    def parse(self, raw: Any) -> tuple[int, int]:
        _expect(raw, str, 'a time such as "00:30"')
        match = re.fullmatch(r"(\d{2}):(\d{2})", raw)
        if not match or int(match[1]) > 23 or int(match[2]) > 59:
            raise ValueError(f'{raw!r} is not a time of day: write "HH:MM", 24-hour, e.g. "00:30"')
        return int(match[1]), int(match[2])

    def render(self, value: Any) -> str:
        return toml_literal(f"{value[0]:02d}:{value[1]:02d}")


@dataclass(frozen=True)
class HostPort:
    """A listening or connecting address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Address(Kind):
    description: str = '"host:port" (IPv6 as "[::1]:port")'

    def parse(self, raw: Any) -> HostPort:
        _expect(raw, str, 'an address such as "127.0.0.1:9464"')
        match = re.fullmatch(r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<port>\d{1,5})|(?P<host>[^:\[\]\s]+):(?P<port4>\d{1,5})", raw)
        if not match:
            raise ValueError(f'{raw!r} is not an address: write "host:port", e.g. "127.0.0.1:9464" or "[::1]:9464"')
        host = match["v6"] or match["host"]
        port = int(match["port"] or match["port4"])
        if not 0 < port < 65536:
            raise ValueError(f"{raw!r}: port {port} is out of range 1-65535")
        if match["v6"]:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{raw!r}: {host!r} is not an IPv6 address") from None
        return HostPort(host, port)

    def render(self, value: Any) -> str:
        return toml_literal(str(value))


@dataclass(frozen=True)
class CidrList(Kind):
    description: str = 'list of CIDRs, e.g. ["10.20.30.0/24", "::1/128"]'

    def parse(self, raw: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        _expect(raw, list, "a list of CIDR strings")
        networks = []
        bad = []
        for item in raw:
            try:
                if not isinstance(item, str):
                    raise ValueError
                networks.append(ipaddress.ip_network(item, strict=True))
            except ValueError:
                bad.append(repr(item))
        if bad:
            raise ValueError(f"not a network in CIDR form: {', '.join(bad)}; write e.g. \"10.20.30.0/24\" "
                             f"(host bits zero) or \"10.20.30.4/32\" for one address")
        return tuple(networks)

    def render(self, value: Any) -> str:
        return toml_literal([str(n) for n in value])


@dataclass(frozen=True)
class Url(Kind):
    schemes: tuple[str, ...] = ("https",)
    description: str = "https URL ending in /"

    def parse(self, raw: Any) -> str:
        _expect(raw, str, "a URL string")
        parts = urlsplit(raw)
        if parts.scheme not in self.schemes or not parts.hostname:
            raise ValueError(f"{raw!r} is not an {'/'.join(self.schemes)} URL: write e.g. \"https://jnks.example.lg.jp/upload/\"")
        if not parts.path.endswith("/"):
            raise ValueError(f"{raw!r}: a peer directory URL must end with '/'")
        if parts.query or parts.fragment or parts.username:
            raise ValueError(f"{raw!r}: no query, fragment or user name allowed in a peer URL")
        return str(raw)


@dataclass(frozen=True)
class DatabaseUrl(Kind):
    description: str = 'SQLAlchemy URL: "sqlite:////abs/path.sqlite3" or "postgresql+psycopg://user@host/db"; empty = ledger.sqlite3 in state_dir'

    def parse(self, raw: Any) -> str:
        _expect(raw, str, "a database URL string")
        if raw == "":
            return ""
        if raw.startswith("sqlite:///"):
            if raw in ("sqlite://", "sqlite:///") or ":memory:" in raw:
                raise ValueError("an in-memory SQLite database loses the ledger on restart: give a file path")
            return str(raw)
        if re.match(r"postgresql(\+\w+)?://", raw):
            return str(raw)
        raise ValueError("unsupported database URL: use \"sqlite:////var/lib/kei-gateway/ledger.sqlite3\" "
                         "or \"postgresql+psycopg://user@host/dbname\"")


@dataclass(frozen=True)
class AbsolutePath(Kind):
    description: str = "absolute directory path"

    def parse(self, raw: Any) -> str:
        _expect(raw, str, "a path string")
        if not raw.startswith("/"):
            raise ValueError(f"{raw!r} is not absolute: write the full path starting with '/'")
        return str(raw)


@dataclass(frozen=True)
class RelativeDir(Kind):
    description: str = "directory (relative paths are under gateway.spool_dir)"

    def parse(self, raw: Any) -> str:
        _expect(raw, str, "a path string")
        if not raw or ".." in raw.split("/"):
            raise ValueError(f"{raw!r}: give a directory such as \"outbox/jnks\" (no '..')")
        return str(raw)


@dataclass(frozen=True)
class FileRef(Kind):
    """A key or certificate: a bare name is looked up in ``$CREDENTIALS_DIRECTORY``."""

    secret: bool = False
    description: str = "file: a bare name is looked up in $CREDENTIALS_DIRECTORY, else a path"

    def parse(self, raw: Any) -> str:
        _expect(raw, str, "a file name or path")
        if not raw.strip():
            raise ValueError("empty: give a credential name (e.g. \"gateway.key\") or an absolute path")
        return str(raw)


@dataclass(frozen=True)
class FileRefList(Kind):
    """Several keys or certificates, each as :class:`FileRef`."""

    secret: bool = False
    description: str = "list of files: a bare name is looked up in $CREDENTIALS_DIRECTORY, else a path"

    def parse(self, raw: Any) -> tuple[str, ...]:
        _expect(raw, list, "a list of file names or paths")
        bad = [repr(r) for r in raw if not (isinstance(r, str) and r.strip())]
        if bad:
            raise ValueError(f"not a file name: {', '.join(bad)}; give credential names (e.g. \"store-old.key\") or absolute paths")
        return tuple(raw)


_PIN = re.compile(r"sha256/[A-Za-z0-9+/]{43}=")


@dataclass(frozen=True)
class Pins(Kind):
    description: str = 'list of SPKI pins "sha256/<base64 of the SHA-256 of the SubjectPublicKeyInfo>"'

    def parse(self, raw: Any) -> tuple[str, ...]:
        _expect(raw, list, "a list of pin strings")
        bad = [repr(p) for p in raw if not (isinstance(p, str) and _PIN.fullmatch(p))]
        if bad:
            raise ValueError(f"not an SPKI pin: {', '.join(bad)}; write \"sha256/\" followed by 44 base64 characters")
        return tuple(raw)


@dataclass(frozen=True)
class LgCode(Kind):
    description: str = "6-digit 全国地方公共団体コード with its check digit"

    def parse(self, raw: Any) -> str:
        _expect(raw, str, 'a quoted 6-digit code such as "131041"')
        if not re.fullmatch(r"\d{6}", raw):
            raise ValueError(f"{raw!r} is not 6 digits: write the 全国地方公共団体コード in quotes, e.g. \"131041\"")
        expected = lg_code_check_digit(raw[:5])
        if int(raw[5]) != expected:
            raise ValueError(f"check digit should be {expected}, got {raw[5]}: "
                             f"check the code against the 全国地方公共団体コード list")
        return str(raw)
