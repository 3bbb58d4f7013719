"""Load and check a configuration: every problem at once, each with its key path."""

from __future__ import annotations

import os
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kei_gateway.config import _kinds as k
from kei_gateway.config._schema import (
    FLOW_SECTIONS, INBOUND_FLOWS, REQUIRED, DatabaseSection, GatewaySection, KeysSection,
    ListenerSection, MetricsListenerSection, PeerSection, RetentionSection, TlsSection,
    SettingMeta, section_settings,
)

__all__ = ["Config", "ConfigProblem", "ConfigError", "config_from_string", "read_config",
           "check_files", "load_config", "CREDENTIALS_ENV"]

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration, at a key path such as ``peers.jnks.allow``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    """The configuration is unusable; :attr:`problems` lists every reason."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s) in the configuration:"]
        lines += [f"  {p}" for p in self.problems]
        lines.append("Fix each key named above (see docs/configuration.md), then run 'kei-gateway check-config' again.")
        return "\n".join(lines)


@dataclass(frozen=True)
class Listeners:
    metrics: MetricsListenerSection = MetricsListenerSection()
    push: ListenerSection | None = None


@dataclass(frozen=True)
class Config:
    """A whole, valid configuration."""

    gateway: GatewaySection
    retention: RetentionSection = RetentionSection()
    database: DatabaseSection = DatabaseSection()
    tls: TlsSection = TlsSection()
    keys: KeysSection = KeysSection()
    peers: Mapping[str, PeerSection] = field(default_factory=dict)
    flows: Mapping[str, Any] = field(default_factory=dict)
    listeners: Listeners = Listeners()
    source: str = "<string>"

    @property
    def database_url(self) -> str:
        """The ledger URL; by default a SQLite file in ``gateway.state_dir``."""
        return self.database.url or f"sqlite:///{self.gateway.state_dir}/ledger.sqlite3"

    @property
    def node_id(self) -> str:
        """This node's id in the ledger (SPEC §14): ``gateway.node_id``, by default the host name."""
        return self.gateway.node_id or socket.gethostname()[:64]

    @property
    def database_url_redacted(self) -> str:
        """The ledger URL without its password, for logs and summaries."""
        return _redact_url(self.database_url)

    def spool_path(self, relative: str) -> str:
        """A flow directory: relative paths are under ``gateway.spool_dir``."""
        return relative if relative.startswith("/") else os.path.join(self.gateway.spool_dir, relative)

    def file_path(self, ref: str, environ: Mapping[str, str] = os.environ) -> str:
        """A key or certificate: a bare name is in ``$CREDENTIALS_DIRECTORY``, else it is a path."""
        if "/" in ref:
            return ref
        credentials = environ.get(CREDENTIALS_ENV)
        if credentials:
            return os.path.join(credentials, ref)
        return os.path.join(os.path.dirname(os.path.abspath(self.source)) if self.source != "<string>" else ".", ref)

    def summary(self) -> str:
        """A few lines a sysadmin reads after ``check-config``."""
        flows = ", ".join(f"{n} (peer {f.peer})" if hasattr(f, "peer") else n
                          for n, f in sorted(self.flows.items())) or "none"
        peers = ", ".join(f"{n} ({p.url})" for n, p in sorted(self.peers.items())) or "none"
        listeners = [f"metrics {self.listeners.metrics.address}"]
        if self.listeners.push is not None:
            listeners.append(f"push {self.listeners.push.address}")
        return "\n".join([
            f"gateway: lg_code {self.gateway.lg_code}, spool {self.gateway.spool_dir}, state {self.gateway.state_dir}",
            f"database: {self.database_url_redacted}",
            f"peers: {peers}",
            f"flows: {flows}",
            f"listeners: {', '.join(listeners)}",
        ])


def _redact_url(url: str) -> str:
    """Hide a password in a database URL."""
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _parse_section(cls: type, table: Any, path: str, problems: list[ConfigProblem]) -> Any:
    if not isinstance(table, dict):
        problems.append(ConfigProblem(path, f"expected a table [{path}], got {type(table).__name__}"))
        return None
    values: dict[str, Any] = {}
    known = set()
    for key, meta, default in section_settings(cls):
        known.add(key)
        key_path = f"{path}.{key}"
        if key not in table:
            if default is REQUIRED:
                problems.append(ConfigProblem(key_path, f"missing: {meta.doc} Example: {key} = {_example_text(meta, default)}"))
            continue
        raw = table[key]
        if isinstance(meta.kind, type):
            nested = _parse_section(meta.kind, raw, key_path, problems)
            if nested is not None:
                values[key] = nested
            continue
        try:
            values[key] = meta.kind.parse(raw)
        except ValueError as error:
            problems.append(ConfigProblem(key_path, str(error)))
    for key in table:
        if key not in known:
            problems.append(ConfigProblem(f"{path}.{key}", f"unknown key; the keys of [{path}] are: {', '.join(sorted(known))}"))
    try:
        return cls(**values)
    except TypeError:
        return None  # a required key is missing; already reported


def _example_text(meta: SettingMeta, default: Any) -> str:
    if isinstance(meta.kind, type):
        return "{ ... }"
    if meta.example is not None:
        return k.toml_literal(list(meta.example) if isinstance(meta.example, tuple) else meta.example)
    return "..." if default is REQUIRED else meta.kind.render(default)


_TOP_LEVEL = {
    "gateway": GatewaySection, "retention": RetentionSection, "database": DatabaseSection,
    "tls": TlsSection, "keys": KeysSection,
}


def config_from_string(text: str, source: str = "<string>") -> Config:
    """Parse configuration text; raise :class:`ConfigError` with every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, [ConfigProblem("(file)", f"not valid TOML: {error}; fix the syntax at that line")]) from None
    except RecursionError:  # tomllib descends once per nested table or array
        raise ConfigError(source, [ConfigProblem("(file)", "not a configuration: tables or arrays nested too deeply; "
                                                           "the configuration nests three levels at most")]) from None
    problems: list[ConfigProblem] = []
    sections: dict[str, Any] = {}
    for name, cls in _TOP_LEVEL.items():
        if name in data:
            sections[name] = _parse_section(cls, data[name], name, problems)
        elif name == "gateway":
            problems.append(ConfigProblem("gateway", "missing: the [gateway] section with at least lg_code is required"))
    peers: dict[str, PeerSection] = {}
    for name, table in _subtables(data, "peers", problems).items():
        if not _valid_name(name):
            problems.append(ConfigProblem(f"peers.{name}", "a peer name may hold only a-z, 0-9, '-' and '_'"))
        peer = _parse_section(PeerSection, table, f"peers.{name}", problems)
        if peer is not None:
            peers[name] = peer
    flows: dict[str, Any] = {}
    for name, table in _subtables(data, "flows", problems).items():
        flow_cls = FLOW_SECTIONS.get(name)
        if flow_cls is None:
            problems.append(ConfigProblem(f"flows.{name}", f"unknown flow; the flows are: {', '.join(FLOW_SECTIONS)}"))
            continue
        flow = _parse_section(flow_cls, table, f"flows.{name}", problems)
        if flow is None:
            continue
        flows[name] = flow
        if not hasattr(flow, "peer"):
            continue  # airis-reconcile: no peer
        if flow.peer not in data.get("peers", {}):
            problems.append(ConfigProblem(f"flows.{name}.peer", f"no peer {flow.peer!r}: add a [peers.{flow.peer}] section or name one of: {', '.join(sorted(peers)) or '(none configured)'}"))
        elif name in INBOUND_FLOWS and flow.peer in peers and not peers[flow.peer].results_url:
            problems.append(ConfigProblem(f"peers.{flow.peer}.results_url", f"flow {name} receives from peer {flow.peer!r}, which needs a results_url"))
    listeners = Listeners()
    listener_tables = _subtables(data, "listeners", problems)
    metrics = listeners.metrics
    push = None
    for name, table in listener_tables.items():
        if name == "metrics":
            metrics = _parse_section(MetricsListenerSection, table, "listeners.metrics", problems) or metrics
        elif name == "push":
            push = _parse_section(ListenerSection, table, "listeners.push", problems)
        else:
            problems.append(ConfigProblem(f"listeners.{name}", "unknown listener; the listeners are: metrics, push"))
    listeners = Listeners(metrics=metrics, push=push)
    if push is not None and push.address == metrics.address:
        problems.append(ConfigProblem("listeners.push.address", f"the same address as listeners.metrics.address ({metrics.address}): give each listener its own port"))
    for key in data:
        if key not in _TOP_LEVEL and key not in ("peers", "flows", "listeners"):
            problems.append(ConfigProblem(key, "unknown section; the sections are: gateway, retention, database, tls, keys, peers, flows, listeners"))
    if problems or sections.get("gateway") is None:
        raise ConfigError(source, problems)
    return Config(
        gateway=sections["gateway"],
        retention=sections.get("retention") or RetentionSection(),
        database=sections.get("database") or DatabaseSection(),
        tls=sections.get("tls") or TlsSection(),
        keys=sections.get("keys") or KeysSection(),
        peers=peers, flows=flows, listeners=listeners, source=source,
    )


def _valid_name(name: str) -> bool:
    return bool(name) and all(c.islower() or c.isdigit() or c in "-_" for c in name) and name.isascii()


def _subtables(data: dict[str, Any], key: str, problems: list[ConfigProblem]) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.append(ConfigProblem(key, f"expected tables [{key}.<name>]"))
        return {}
    return value


MAX_CONFIG_BYTES = 1 << 20
"""A configuration file is read up to this size (1 MiB; the example is about 10 KiB), so a device or a
huge file is refused with a reason instead of filling the memory."""


def read_config(path: str) -> Config:
    """Read and parse the file at *path* (UTF-8 TOML)."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigError(path, [ConfigProblem("(file)", "not a regular file; give the configuration file "
                                                                 "with -c or KEI_GATEWAY_CONFIG")])
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(path, [ConfigProblem("(file)", f"cannot read: {error.strerror}; give the file with -c or KEI_GATEWAY_CONFIG")]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(path, [ConfigProblem("(file)", f"larger than {MAX_CONFIG_BYTES // 1024} KiB: not a "
                                                         "configuration file; give the right one with -c")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(path, [ConfigProblem("(file)", f"not UTF-8 at byte {error.start}: save the file as UTF-8")]) from None
    return config_from_string(text, source=path)


def check_files(config: Config, environ: Mapping[str, str] = os.environ,
                euid: int | None = None) -> list[ConfigProblem]:
    """Problems with the files the configuration names: missing, unreadable, or secrets not private.

    A secret (the TLS private key, ``keys.store``, ``keys.audit``, each of
    ``keys.store_previous``) must be a regular file with mode 0600 or 0400 owned by
    *euid* (default: this process's effective uid, i.e. the service user), so that no
    other account can read it, change it or change its mode. A file systemd put in
    ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``/``LoadCredentialEncrypted=``) is
    systemd's: it may be owned by root and show 0440 (read granted to the service
    user alone by an ACL), but never be writable by the group or open to others.
    """
    problems: list[ConfigProblem] = []
    uid = os.geteuid() if euid is None else euid
    refs: list[tuple[str, str, bool]] = [
        ("tls.certificate", config.tls.certificate, False),
        ("tls.private_key", config.tls.private_key, True),
        ("keys.store", config.keys.store, True),
        ("keys.audit", config.keys.audit, True),
    ]
    refs += [(f"keys.store_previous[{i}]", ref, True) for i, ref in enumerate(config.keys.store_previous)]
    refs += [(f"peers.{name}.ca", peer.ca, False) for name, peer in sorted(config.peers.items())]
    credentials = environ.get(CREDENTIALS_ENV)
    for key_path, ref, secret in refs:
        path = config.file_path(ref, environ)
        # systemd owns $CREDENTIALS_DIRECTORY: it is private to the service, and on
        # tmpfs its files may show 0440 with an ACL for the service user alone.
        managed = credentials is not None and os.path.dirname(path) == credentials.rstrip("/")
        where = "" if "/" in ref else (
            f" (looked up in ${CREDENTIALS_ENV})" if environ.get(CREDENTIALS_ENV) else
            f" (a bare name: ${CREDENTIALS_ENV} is not set, so it is read next to the config file)")
        try:
            st = os.stat(path)
        except OSError as error:
            problems.append(ConfigProblem(key_path, f"{path}{where}: {error.strerror}; create the file or correct the name"))
            continue
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            problems.append(ConfigProblem(key_path, f"{path}: not a regular file"))
        elif not os.access(path, os.R_OK):
            problems.append(ConfigProblem(key_path, f"{path}: not readable by this user (uid {os.getuid()}); fix its owner or mode"))
        elif not secret:
            continue
        elif managed:
            if st.st_uid not in (uid, 0):
                problems.append(ConfigProblem(key_path, f"{path}: a credential owned by {_user(st.st_uid)}, neither root "
                                                        f"(systemd) nor the service user {_user(uid)}; let systemd provide "
                                                        f"it with LoadCredential="))
            elif mode & 0o027:
                problems.append(ConfigProblem(key_path, f"{path}: mode {mode:04o} lets others read or the group write a "
                                                        f"secret; let systemd provide it with LoadCredential="))
        elif mode & 0o077:
            problems.append(ConfigProblem(key_path, f"{path}: mode {mode:04o} lets group or others read a secret; "
                                                    f"run 'chmod 600 {path}' (owner: the service user)"))
        elif mode & 0o100:
            problems.append(ConfigProblem(key_path, f"{path}: mode {mode:04o}: a secret must be mode 0600 or 0400; "
                                                    f"run 'chmod 600 {path}'"))
        elif st.st_uid != uid:
            problems.append(ConfigProblem(key_path, f"{path}: owned by {_user(st.st_uid)}, not by the service user "
                                                    f"{_user(uid)} that reads it; run 'chown {_user(uid, bare=True)} {path}' "
                                                    f"(or deliver it with systemd's LoadCredential=)"))
    return problems


def _user(uid: int, bare: bool = False) -> str:
    """``name (uid N)``, or the bare name (the number when it has none)."""
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid) if bare else f"uid {uid}"
    return name if bare else f"{name} (uid {uid})"


def load_config(path: str, environ: Mapping[str, str] = os.environ) -> Config:
    """Read, parse and check files: what ``run`` and ``check-config`` use."""
    config = read_config(path)
    problems = check_files(config, environ)
    if problems:
        raise ConfigError(path, problems)
    return config
