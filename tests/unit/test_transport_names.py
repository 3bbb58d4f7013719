"""Remote names, Content-Digest, Retry-After and error kinds: pure functions."""

from __future__ import annotations

import base64
import datetime
import hashlib

import pytest

from kei_gateway.adapters.transport import (
    HttpError,
    JST,
    content_digest,
    parse_retry_after,
    part_name,
    remote_name,
)
from kei_gateway.adapters.transport.errors import PeerIdentityError, TransientError

UTC = datetime.timezone.utc


def test_when_the_creation_time_is_utc_then_the_name_carries_jst() -> None:
    when = datetime.datetime(2025, 3, 31, 15, 30, 5, tzinfo=UTC)
    assert remote_name("131041", "jnks-payments", when, 42) == "131041_jnks-payments_20250401003005_42.dat"


def test_when_the_same_transfer_is_named_twice_then_the_name_is_the_same() -> None:
    when = datetime.datetime(2025, 4, 1, 9, 0, 0, tzinfo=JST)
    assert remote_name("131041", "mpn-slips", when, "7") == remote_name("131041", "mpn-slips", when, 7)


@pytest.mark.parametrize("args", [
    ("13104", "jnks-payments", 1), ("131041", "JNKS", 1), ("131041", "jnks-payments", "../x"),
    ("131041", "jnks-payments", ""), ("131041", "jnks-payments", "a_b"),
])
def test_when_a_part_is_malformed_then_remote_name_refuses(args: tuple[str, str, object]) -> None:
    lg_code, flow, ident = args
    with pytest.raises(ValueError):
        remote_name(lg_code, flow, datetime.datetime(2025, 1, 1, tzinfo=JST), ident)  # type: ignore[arg-type]


def test_when_the_creation_time_is_naive_then_remote_name_refuses() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        remote_name("131041", "jnks-payments", datetime.datetime(2025, 1, 1), 1)


def test_part_name_appends_part() -> None:
    assert part_name("a.dat") == "a.dat.part"


def test_when_content_digest_then_rfc9530_sha256_of_the_bytes() -> None:
    assert content_digest(hashlib.sha256(b"").hexdigest()) == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    digest = hashlib.sha256(b"hello").digest()
    assert content_digest(digest.hex()) == f"sha-256=:{base64.b64encode(digest).decode()}:"
    with pytest.raises(ValueError):
        content_digest("abcd")


NOW = datetime.datetime(2025, 4, 1, 0, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("value", "expected"), [
    ("120", 120.0), (b"0", 0.0), ("  30 ", 30.0),
    ("Tue, 01 Apr 2025 00:02:00 GMT", 120.0),
    ("Mon, 31 Mar 2025 23:00:00 GMT", 0.0),  # in the past: no wait
    ("soon", None), ("-5", None), ("", None), (None, None),
])
def test_when_retry_after_then_seconds_or_http_date(value: str | bytes | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(("status", "kind", "retryable"), [
    (429, "throttled", True), (503, "unavailable", True), (500, "server_error", True),
    (403, "rejected", False), (404, "rejected", False), (408, "rejected", True), (400, "rejected", False),
])
def test_http_error_kinds_are_metric_reasons(status: int, kind: str, retryable: bool) -> None:
    error = HttpError("jnks", "PUT", "/upload/a.dat.part", status, 30.0 if status in (429, 503) else None)
    assert (error.kind, error.retryable, error.status) == (kind, retryable, status)


def test_identity_and_transient_kinds_are_checked() -> None:
    assert PeerIdentityError("jnks", "pin", "x").alert is True
    assert PeerIdentityError("jnks", "handshake", "x").alert is False
    assert TransientError("jnks", "idle_timeout", "x").retryable is True
    with pytest.raises(ValueError):
        PeerIdentityError("jnks", "weird", "x")
    with pytest.raises(ValueError):
        TransientError("jnks", "weird", "x")
