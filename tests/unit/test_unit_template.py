"""The template unit kei-gateway@.service is the plain unit with per-instance names, and is current."""

from __future__ import annotations

import re

import pytest

from kei_gateway.tools.units import PLAIN_UNIT, TEMPLATE_UNIT, template_unit

PLAIN = PLAIN_UNIT.read_text(encoding="utf-8")


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(("#", ";"))]


def test_when_the_plain_unit_changes_then_the_committed_template_must_be_regenerated() -> None:
    """When the template is derived again, then it equals the committed file
    (else: python -m kei_gateway.tools.units > systemd/kei-gateway@.service)."""
    assert TEMPLATE_UNIT.read_text(encoding="utf-8") == template_unit(PLAIN)


def test_when_derived_then_only_the_per_instance_lines_differ_from_the_plain_unit() -> None:
    """When the template is compared with the plain unit, then every other directive is the same, in order."""
    template = directives(template_unit(PLAIN))
    instance_lines = {line for line in template if "%i" in line}
    assert [line for line in template if line not in instance_lines] == \
        [line for line in directives(PLAIN) if not re.match(
            r"(Description|User|Group|StateDirectory|LogsDirectory|RuntimeDirectory|ReadWritePaths|LoadCredential)=",
            line)]
    assert {line.split("=", 1)[0] for line in instance_lines} == {
        "Description", "User", "Group", "StateDirectory", "LogsDirectory", "RuntimeDirectory", "ReadWritePaths",
        "LoadCredential", "Environment"}


def test_when_derived_then_an_instance_shares_no_file_with_another() -> None:
    """When an instance's paths and accounts are read, then each carries %i (config, credentials, user, dirs)."""
    settings: dict[str, list[str]] = {}
    for line in directives(template_unit(PLAIN)):
        if line.startswith("["):
            continue
        key, value = line.split("=", 1)
        settings.setdefault(key, []).append(value)
    assert settings["User"] == ["kei-gateway-%i"] and settings["Group"] == ["kei-spool-%i"]
    for key in ("StateDirectory", "LogsDirectory", "RuntimeDirectory"):
        assert settings[key] == ["kei-gateway-%i"], key
    assert settings["ReadWritePaths"] == ["-/var/spool/kei-gateway-%i"]
    assert all(value.split(":", 1)[1].startswith("/etc/kei-gateway/%i/credentials/")
               for value in settings["LoadCredential"])
    assert "KEI_GATEWAY_CONFIG=/etc/kei-gateway/%i/kei-gateway.toml" in settings["Environment"]
    assert "KEI_GATEWAY_INSTANCE=%i" in settings["Environment"]


def test_when_the_plain_unit_changes_shape_then_the_derivation_says_what_to_update() -> None:
    """When a line the derivation rewrites is gone from the plain unit, then it raises naming the pattern."""
    with pytest.raises(ValueError, match="User=kei-gateway"):
        template_unit(PLAIN.replace("\nUser=kei-gateway\n", "\nUser=someone\n"))
