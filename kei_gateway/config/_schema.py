"""The configuration schema, declared once (SPEC §11).

Each section is a frozen dataclass; each setting is a field built by
:func:`setting`, which holds its kind, default, example and documentation.
The loader, ``check-config``, ``etc/kei-gateway.toml.example`` and
``docs/configuration.md`` are all derived from these declarations, and so is what a
reload can change: each setting is ``reload=LIVE`` (the default: a reload applies it)
or ``reload=RESTART`` (it takes effect only after a restart); a section whose every
setting needs a restart says so once (``RELOAD: ClassVar[str] = RESTART``).
:func:`kei_gateway.config.restart_needed` compares two configurations by these
declarations.
"""

from __future__ import annotations

import ipaddress
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, cast

from kei_gateway.config import _kinds as k

__all__ = [
    "REQUIRED", "LIVE", "RESTART", "SettingMeta", "setting", "section_settings", "section_reload",
    "GatewaySection", "RetentionSection", "DatabaseSection", "TlsSection", "KeysSection",
    "RetryPolicy", "PeerSection", "OutboundFlowSection", "InboundFlowSection",
    "ResultsFlowSection", "AirisFlowSection", "ListenerSection", "MetricsListenerSection", "FLOW_SECTIONS",
    "OUTBOUND_FLOWS", "INBOUND_FLOWS", "LOCAL_FLOWS",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of a setting that has none: the key must be written."""


LIVE = "live"
"""A reload applies the setting."""
RESTART = "restart"
"""The setting takes effect only after a restart (a reload says so: ``config.restart_needed``)."""


@dataclass(frozen=True)
class SettingMeta:
    kind: k.Kind | type
    doc: str
    example: Any = None
    required: bool = False
    reload: str = LIVE


def setting(kind: k.Kind | type, doc: str, default: Any = REQUIRED, example: Any = None, *,
            reload: str = LIVE) -> Any:
    """Declare one setting: its kind (a :class:`~kei_gateway.config._kinds.Kind` or a nested section class),
    and whether a reload applies it (:data:`LIVE`) or it needs a restart (:data:`RESTART`)."""
    if reload not in (LIVE, RESTART):
        raise ValueError(f"reload must be {LIVE!r} or {RESTART!r}, not {reload!r}")
    meta = SettingMeta(kind, doc, example, required=default is REQUIRED, reload=reload)
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for defaults")
    return field(default=default, metadata={"setting": meta})


def section_settings(section: type) -> list[tuple[str, SettingMeta, Any]]:
    """(key, meta, default) of each setting of a section class, in declaration order."""
    out = []
    for f in fields(section):
        meta = f.metadata.get("setting")
        if meta is None:
            continue
        default = f.default if f.default is not MISSING else REQUIRED
        out.append((f.name, cast(SettingMeta, meta), default))
    return out


def section_reload(section: type) -> str:
    """:data:`RESTART` when the whole section needs a restart to change, else :data:`LIVE` (see its settings)."""
    return str(getattr(section, "RELOAD", LIVE))


@dataclass(frozen=True)
class GatewaySection:
    """The gateway itself."""

    lg_code: str = setting(k.LgCode(), "全国地方公共団体コード of this city (6 digits, check digit verified); every JNKS record must carry it.", example="131041", reload=RESTART)
    spool_dir: str = setting(k.AbsolutePath(), "Root of the intranet spool: outbox/, inbox/ and quarantine/ live here.", "/var/spool/kei-gateway", reload=RESTART)
    state_dir: str = setting(k.AbsolutePath(), "The gateway's private state: encrypted store, default SQLite ledger, reports.", "/var/lib/kei-gateway", reload=RESTART)
    purge_at: tuple[int, int] = setting(k.TimeOfDay(), "Local time of the daily purge of expired personal data.", (0, 30))
    log_level: str = setting(k.Choice(choices=("debug", "info", "warn", "error", "critical")), "Lowest level of events logged; changes on reload.", "info")
    max_file_size: int = setting(k.Size(minimum=1 << 10, maximum=64 << 30), "Largest outbox file taken (SPEC §4): a larger one is refused unread — not read, not kept, removed from the outbox, and quarantine/<flow>/<name>.errors.txt says why. Bounds: 1KiB to 64GiB (1,000,000 MPN slips are 158 MB); changes on reload.", 2 << 30)
    node_id: str = setting(k.Text(pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}|", hint="letters, digits, '.', '_', '-' (up to 64), or empty"), "This node's id in a shared ledger (docs/high-availability.md): unique among the nodes on one database; it holds the node's leases. Empty: the host name.", "", example="gw1", reload=RESTART)


@dataclass(frozen=True)
class RetentionSection:
    """How long data is kept before the daily purge erases it."""

    payloads: float = setting(k.Duration(minimum=0), "Staged, sent and relayed payloads in the encrypted store.", 86400.0)
    inbox: float = setting(k.Duration(minimum=0), "Relayed files the tax system has not taken from inbox/.", 7 * 86400.0)
    quarantine: float = setting(k.Duration(minimum=0), "Quarantined files and their error lists.", 30 * 86400.0)
    ledger: float = setting(k.Duration(minimum=86400), "Transfer metadata and audit records (no payloads).", 1826 * 86400.0)


@dataclass(frozen=True)
class DatabaseSection:
    """The ledger database."""

    RELOAD: ClassVar[str] = RESTART

    url: str = setting(k.DatabaseUrl(), "SQLAlchemy URL of the ledger. Empty: SQLite file ledger.sqlite3 in gateway.state_dir (WAL, synchronous=FULL).", "", example="sqlite:////var/lib/kei-gateway/ledger.sqlite3")
    busy_timeout: float = setting(k.Duration(minimum=0.1), "How long a blocked database operation waits for a lock before it is retried.", 5.0)
    lease: float = setting(k.Duration(minimum=1), "How long a node's claim on a piece of work (a send, a pull, an ingest, the purge, the audit verify) lasts unless renewed; renewed every third of it. A node that stops for longer loses its work to another node (docs/high-availability.md).", 15.0)


@dataclass(frozen=True)
class TlsSection:
    """The gateway's TLS identity, presented to peers and on the push listener."""

    RELOAD: ClassVar[str] = RESTART

    certificate: str = setting(k.FileRef(), "The gateway's certificate (PEM), with its chain.", "gateway.crt")
    private_key: str = setting(k.FileRef(secret=True), "The private key of the certificate (PEM). Must not be readable by group or others.", "gateway.key")
    min_version: str = setting(k.Choice(choices=("1.2", "1.3")), "Lowest TLS version accepted or offered.", "1.2")


@dataclass(frozen=True)
class KeysSection:
    """Secret keys, normally systemd credentials."""

    RELOAD: ClassVar[str] = RESTART

    store: str = setting(k.FileRef(secret=True), "Key of the encrypted store: 32 random bytes, raw or base64 (AES-256-GCM).", "store.key")
    audit: str = setting(k.FileRef(secret=True), "HMAC key of the audit chain: 32 random bytes, raw or base64.", "audit.key")
    store_previous: tuple[str, ...] = setting(k.FileRefList(secret=True), "Keys of blobs not yet re-encrypted after a rotation: earlier values of store, readable until 'kei-gateway keys rotate' reports none left; keep them until payment results from before the rotation can no longer arrive (unconfirmed_after plus a margin), since result dedupe uses every listed key.", ())


@dataclass(frozen=True)
class RetryPolicy:
    """Retry schedule of a peer: exponential back-off with jitter."""

    attempts: int = setting(k.Integer(minimum=1, maximum=1000), "Attempts before a transfer is FAILED.", 8)
    first_delay: float = setting(k.Duration(minimum=0.001), "Delay before the second attempt.", 30.0)
    max_delay: float = setting(k.Duration(minimum=0.001), "Longest delay between attempts.", 3600.0)


@dataclass(frozen=True)
class PeerSection:
    """One LGWAN peer (``[peers.<name>]``)."""

    url: str = setting(k.Url(), "Upload directory (WebDAV) of the peer.", example="https://jnks.example.lg.jp/upload/")
    results_url: str = setting(k.Url(), "Results directory the gateway polls (PROPFIND/GET/DELETE). Empty: the peer has none.", "", example="https://jnks.example.lg.jp/results/")
    ca: str = setting(k.FileRef(), "CA bundle (PEM) that the peer's server and client certificates must chain to.", example="/etc/kei-gateway/tls/jnks-ca.pem")
    pins: tuple[str, ...] = setting(k.Pins(), "Optional SHA-256 SPKI pins of the peer's certificate.", ())
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = setting(k.CidrList(), "Where the peer may be: outbound connections go only to resolved addresses inside these.", example=("10.20.30.0/24",))
    push_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = setting(k.CidrList(), "Where the peer may push from (push listener).", ())
    connect_timeout: float = setting(k.Duration(minimum=0.1), "TCP and TLS connect timeout.", 10.0)
    transfer_timeout: float = setting(k.Duration(minimum=1), "Longest time one whole transfer may take.", 600.0)
    retry: RetryPolicy = setting(RetryPolicy, "Retry schedule, an inline table.", RetryPolicy())


@dataclass(frozen=True)
class OutboundFlowSection:
    """A flow from an outbox to a peer (``jnks-payments``, ``mpn-slips``)."""

    RELOAD: ClassVar[str] = RESTART  # flows start and stop with the process

    peer: str = setting(k.Text(pattern=r"[a-z0-9][a-z0-9_-]*", hint="a peer name"), "Name of the peer (a [peers.<name>] section).", example="jnks")
    outbox: str = setting(k.RelativeDir(), "Outbox the tax system writes into.", example="outbox/jnks")
    ready: str = setting(k.Choice(choices=("rename", "marker")), "When a file is ready: renamed from name.tmp or a dotfile, or followed by name.end.", "rename")
    encoding: str = setting(k.Choice(choices=("cp932", "utf-8")), "Encoding of the files the tax system writes.", "cp932")
    charset: str = setting(k.Choice(choices=("jisx0208", "cp932")), "Characters allowed in full-width fields: JIS X 0208 only, or CP932 with its extensions.", "jisx0208")
    gaiji: str = setting(k.Choice(choices=("reject", "substitute", "degenerate")), "外字 policy: reject the file, substitute 〓, or degenerate (縮退) each 外字 to its unique JIS X 0208 candidate in the MJ縮退マップ, else the 国税庁 JIS縮退マップ (counted; the list is kept encrypted with the transfer: kei-gateway transfers show ID --degenerations).", "reject")
    gaiji_fallback: str = setting(k.Choice(choices=("reject", "substitute")), "With gaiji = \"degenerate\": what happens to a 外字 the maps give no unique candidate for: reject the file, or substitute 〓.", "reject")
    hold_over_records: int = setting(k.Integer(minimum=0), "Files with more records are HELD until an operator approves them; 0 never holds.", 0)


@dataclass(frozen=True)
class InboundFlowSection:
    """A flow from a peer into an inbox (``jnks-receipts``)."""

    RELOAD: ClassVar[str] = RESTART  # flows start and stop with the process

    peer: str = setting(k.Text(pattern=r"[a-z0-9][a-z0-9_-]*", hint="a peer name"), "Name of the peer (a [peers.<name>] section).", example="jnks")
    inbox: str = setting(k.RelativeDir(), "Inbox the tax system reads from.", example="inbox/jnks-receipts")
    poll_interval: float = setting(k.Duration(minimum=1), "How often the peer's results_url is polled.", 300.0)
    marker: bool = setting(k.Boolean(), "Also write an empty name.end after each relayed file.", False)


@dataclass(frozen=True)
class ResultsFlowSection(InboundFlowSection):
    """The MPN payment results flow (``mpn-results``)."""

    unconfirmed_after: float = setting(k.Duration(minimum=60), "A 速報 with no 確報 after this long is reported.", 3 * 86400.0)


@dataclass(frozen=True)
class AirisFlowSection:
    """The AIRIS 突合 flow (``[flows.airis-reconcile]``, SPEC §13): no peer, two outboxes and an inbox."""

    RELOAD: ClassVar[str] = RESTART  # flows start and stop with the process

    airis_outbox: str = setting(k.RelativeDir(), "Where the AIRIS download (the AES-256 ZIP as received) and its key file <name>.key are put.", example="outbox/airis")
    register_outbox: str = setting(k.RelativeDir(), "Where the tax system writes its 小型二輪 register extract (tax-register-2w).", example="outbox/airis-register")
    inbox: str = setting(k.RelativeDir(), "Where the results (.dat, .csv, .txt) are written for the tax division.", example="inbox/airis-reconcile")
    gaiji: str = setting(k.Choice(choices=("reject", "substitute", "degenerate")), "外字 policy for AIRIS values (names, addresses, plates) outside JIS X 0208 in the .dat (the .csv keeps them as AIRIS wrote them): degenerate (縮退) each to its unique JIS X 0208 candidate in the MJ縮退マップ, else the 国税庁 JIS縮退マップ; substitute 〓; or reject the run (an errors file names row and column). Counted in the .txt.", "degenerate")
    gaiji_fallback: str = setting(k.Choice(choices=("reject", "substitute")), "With gaiji = \"degenerate\": what happens to an AIRIS 外字 the maps give no unique candidate for: substitute 〓, or reject the run.", "substitute")


@dataclass(frozen=True)
class ListenerSection:
    """The LGWAN push listener (``[listeners.push]``); absent means no push."""

    address: k.HostPort = setting(k.Address(), "Address to listen on.", example="0.0.0.0:8443", reload=RESTART)
    max_connections_per_source: int = setting(k.Integer(minimum=1, maximum=1024), "Connections open at once from one source address; more are closed before the TLS handshake (reason connections).", 8)
    max_pushes: int = setting(k.Integer(minimum=1, maximum=32), "Push bodies received at once; more are answered 503 busy with Retry-After. One source address may hold at most half of them (at least one), so a listed peer cannot take every slot.", 4)
    header_timeout: float = setting(k.Duration(minimum=1, maximum=300), "Time from the connection (TLS handshake included), or from the first byte of a further request on it, to the end of the request headers; slower is answered 408 and closed (reason header_timeout).", 10.0)
    min_body_rate: int = setting(k.Size(minimum=1, maximum=1 << 30), "Least body bytes a second, measured over each 10 s while a body is being received (time the gateway itself holds the connection back does not count); slower is answered 408 and closed (reason slow_body). Bounds 1B to 1GiB.", 16 << 10)
    max_header_bytes: int = setting(k.Size(minimum=1 << 10, maximum=1 << 20), "Largest request line plus headers; larger is answered 431 and closed (reason header_size). Bounds 1KiB to 1MiB.", 16 << 10)
    max_headers: int = setting(k.Integer(minimum=8, maximum=500), "Most header fields in a request; more is answered 431 and closed (reason header_count).", 64)


@dataclass(frozen=True)
class MetricsListenerSection:
    """Metrics and health (``[listeners.metrics]``)."""

    address: k.HostPort = setting(k.Address(), "Address of /metrics, /healthz and /readyz.", k.HostPort("127.0.0.1", 9464),
                                  reload=RESTART)
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = setting(
        k.CidrList(), "Who may connect; others are closed before any request is read.",
        (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")))


FLOW_SECTIONS: dict[str, type] = {
    "jnks-payments": OutboundFlowSection,
    "jnks-receipts": InboundFlowSection,
    "mpn-slips": OutboundFlowSection,
    "mpn-results": ResultsFlowSection,
    "airis-reconcile": AirisFlowSection,
}
OUTBOUND_FLOWS = ("jnks-payments", "mpn-slips")
INBOUND_FLOWS = ("jnks-receipts", "mpn-results")
LOCAL_FLOWS = ("airis-reconcile",)
"""Flows with no peer: they read the spool and write the spool (AIRIS 突合)."""
