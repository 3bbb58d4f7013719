"""Render the schema as the example configuration file and as the documentation page."""

from __future__ import annotations

from typing import Any

from kei_gateway.config import _kinds as k
from kei_gateway.config._schema import (
    REQUIRED, AirisFlowSection, DatabaseSection, GatewaySection, InboundFlowSection, KeysSection, ListenerSection,
    MetricsListenerSection, OutboundFlowSection, PeerSection, ResultsFlowSection, RetentionSection,
    RESTART, SettingMeta, TlsSection, section_reload, section_settings,
)

__all__ = ["example_toml", "configuration_markdown", "SECTIONS"]

# (TOML header, section class, per-instance example overrides)
SECTIONS: list[tuple[str, type, dict[str, Any]]] = [
    ("gateway", GatewaySection, {}),
    ("retention", RetentionSection, {}),
    ("database", DatabaseSection, {}),
    ("tls", TlsSection, {}),
    ("keys", KeysSection, {}),
    ("peers.jnks", PeerSection, {}),
    ("peers.mpn", PeerSection, {"url": "https://mpn.example.lg.jp/slips/", "results_url": "https://mpn.example.lg.jp/results/",
                                "ca": "/etc/kei-gateway/tls/mpn-ca.pem", "allow": ("10.20.40.0/24",), "push_allow": ("10.20.40.0/24",)}),
    ("flows.jnks-payments", OutboundFlowSection, {}),
    ("flows.jnks-receipts", InboundFlowSection, {}),
    ("flows.mpn-slips", OutboundFlowSection, {"peer": "mpn", "outbox": "outbox/mpn-slips"}),
    ("flows.mpn-results", ResultsFlowSection, {"peer": "mpn", "inbox": "inbox/mpn-results"}),
    ("flows.airis-reconcile", AirisFlowSection, {}),
    ("listeners.push", ListenerSection, {}),
    ("listeners.metrics", MetricsListenerSection, {}),
]


def _value_text(meta: SettingMeta, default: Any, override: Any = None) -> str:
    if override is not None:
        return k.toml_literal(list(override) if isinstance(override, tuple) else override)
    if isinstance(meta.kind, type):
        return "{ " + ", ".join(f"{key} = {_value_text(m, getattr(default, key))}"
                                for key, m, _ in section_settings(meta.kind)) + " }"
    if meta.example is not None and (default is REQUIRED or default in ("", ())):
        return k.toml_literal(list(meta.example) if isinstance(meta.example, tuple) else meta.example)
    return meta.kind.render(default)


def _kind_text(meta: SettingMeta) -> str:
    if isinstance(meta.kind, type):
        return "inline table: " + ", ".join(key for key, _, _ in section_settings(meta.kind))
    return str(meta.kind.description)


def example_toml() -> str:
    """``etc/kei-gateway.toml.example``: every section and key with its documentation."""
    lines = [
        "# kei-gateway configuration (TOML). Generated from the schema in kei_gateway/config;",
        "# regenerate with: python -m kei_gateway.config example > etc/kei-gateway.toml.example",
        "# Check a configuration with: kei-gateway check-config -c FILE",
        "# Durations: \"30s\", \"5m\", \"1h\", \"7d\". Addresses: \"host:port\". Relative directories are",
        "# under gateway.spool_dir. A key or certificate given as a bare name (no '/') is read",
        "# from $CREDENTIALS_DIRECTORY (systemd LoadCredential=).",
    ]
    for header, cls, overrides in SECTIONS:
        lines += ["", f"# {(cls.__doc__ or '').strip()}", f"[{header}]"]
        for key, meta, default in section_settings(cls):
            required = " (required)" if default is REQUIRED else ""
            lines.append(f"# {meta.doc}{required}")
            lines.append(f"{key} = {_value_text(meta, default, overrides.get(key))}")
    return "\n".join(lines) + "\n"


def configuration_markdown() -> str:
    """``docs/configuration.md``: one table per section."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the schema in `kei_gateway/config/_schema.py` "
        "(`python -m kei_gateway.config docs > docs/configuration.md`); a test fails if this page "
        "and the schema disagree. The annotated example is `etc/kei-gateway.toml.example`.",
        "",
        "The file is TOML, read from `-c FILE`, else `$KEI_GATEWAY_CONFIG`, else "
        "`/etc/kei-gateway/kei-gateway.toml`. Unknown keys are errors. `kei-gateway check-config` "
        "prints every problem at once with its key path (exit code 2), or `OK` and a summary.",
        "",
        "- Durations are strings: `\"30s\"`, `\"5m\"`, `\"1h\"`, `\"7d\"` (units ms, s, m, h, d; combinable: `\"1h30m\"`).",
        "- Addresses are `\"host:port\"`, IPv6 as `\"[::1]:9464\"`.",
        "- Relative directories are under `gateway.spool_dir`.",
        "- A key or certificate given as a bare name (no `/`) is read from `$CREDENTIALS_DIRECTORY` "
        "(systemd `LoadCredential=`); when that is not set (a terminal), next to the configuration file.",
        "- Secret files (`tls.private_key`, `keys.store`, `keys.audit`) must not be readable by group or others: "
        "the daemon refuses to start and names the file.",
        "- Sections `[peers.<name>]`, `[flows.<flow>]` and `[listeners.push]` are optional: a gateway with only "
        "`[gateway]` starts, serves metrics and health, and moves no files.",
        "- A reload (`systemctl reload`, SIGHUP) applies every key but those marked *restart*: they take "
        "effect at the next start, and the reload says so (`config.restart_needed`). The marks come from "
        "the schema (`reload=RESTART`), as does the reload's list.",
    ]
    seen: set[type] = set()
    for header, cls, _ in SECTIONS:
        if cls in seen:
            continue
        seen.add(cls)
        name = header.replace("peers.jnks", "peers.<name>").replace("flows.jnks-payments", "flows.jnks-payments / flows.mpn-slips")
        whole = section_reload(cls) == RESTART
        out += ["", f"## [{name}]", "", (cls.__doc__ or "").strip()
                + (" Any change here takes effect only after a restart (*restart*)." if whole else ""), "",
                "| key | kind | default | meaning |", "|---|---|---|---|"]
        for key, meta, default in section_settings(cls):
            shown = "**required**" if default is REQUIRED else f"`{_value_text(meta, default)}`"
            restart = " *restart*" if meta.reload == RESTART and not whole else ""
            out.append(f"| `{key}` | {_kind_text(meta)} | {shown} | {meta.doc}{restart} |")
    return "\n".join(out) + "\n"
