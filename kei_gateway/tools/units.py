"""The template unit ``kei-gateway@.service``, derived from ``kei-gateway.service``.

One instance per city on a shared host (``kei-gateway@131041``). The plain unit is
the one source: every directive and the reason for it live there; the template is
that unit with the per-instance names substituted and the comments left out.
``python -m kei_gateway.tools.units > systemd/kei-gateway@.service`` regenerates it;
a test fails when the committed file and this derivation disagree.

Per instance (``%i``): config ``/etc/kei-gateway/%i/kei-gateway.toml`` (through
``KEI_GATEWAY_CONFIG``, so ``ExecStart=`` and ``ExecReload=``'s ``check-config`` read
the same file), credentials from ``/etc/kei-gateway/%i/credentials``, its own user
``kei-gateway-%i`` and spool group ``kei-spool-%i`` (so the kernel keeps instances
out of each other's files), ``/var/lib``, ``/var/log``, ``/run`` and
``/var/spool/kei-gateway-%i``, and ``KEI_GATEWAY_INSTANCE=%i`` (the journald field
``KEI_INSTANCE``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

__all__ = ["PLAIN_UNIT", "TEMPLATE_UNIT", "template_unit"]

_SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
PLAIN_UNIT = _SYSTEMD / "kei-gateway.service"
TEMPLATE_UNIT = _SYSTEMD / "kei-gateway@.service"

HEADER = """\
# kei-gateway@.service: one kei-gateway per city on a shared host (kei-gateway@131041).
#
# GENERATED from kei-gateway.service by 'python -m kei_gateway.tools.units';
# do not edit: change kei-gateway.service (which explains every line), then
# regenerate.  Installed by 'scripts/install --instance NAME'; put local changes
# in a drop-in ('systemctl edit kei-gateway@NAME').  docs/operations.md,
# "Several cities on one host".
"""

_INSTANCE_ENVIRONMENT = [
    "Environment=KEI_GATEWAY_CONFIG=/etc/kei-gateway/%i/kei-gateway.toml",
    "Environment=KEI_GATEWAY_INSTANCE=%i",
]

# (pattern, replacement, how many directive lines it must change). A count that no
# longer holds means kei-gateway.service changed shape: the derivation says so
# instead of silently producing a template that shares a file with another city.
_SUBSTITUTIONS: list[tuple[str, str, int]] = [
    (r"^Description=kei-gateway ", "Description=kei-gateway %i ", 1),
    (r"^User=kei-gateway$", "User=kei-gateway-%i", 1),
    (r"^Group=kei-spool$", "Group=kei-spool-%i", 1),
    (r"^(StateDirectory|LogsDirectory|RuntimeDirectory)=kei-gateway$", r"\1=kei-gateway-%i", 3),
    (r"^ReadWritePaths=-/var/spool/kei-gateway$", "ReadWritePaths=-/var/spool/kei-gateway-%i", 1),
    (r"^LoadCredential=([^:]+):/etc/kei-gateway/credentials/", r"LoadCredential=\1:/etc/kei-gateway/%i/credentials/", 4),
    (r"^(Environment=PYTHONFAULTHANDLER=1)$", "\\1\n" + "\n".join(_INSTANCE_ENVIRONMENT), 1),
]


def template_unit(plain: str) -> str:
    """The template unit's text from the plain unit's *plain* text."""
    lines = [line for line in plain.splitlines() if line and not line.startswith(("#", ";"))]
    text = "\n".join(lines)
    for pattern, replacement, expected in _SUBSTITUTIONS:
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        if count != expected:
            raise ValueError(f"{PLAIN_UNIT.name}: {pattern!r} matched {count} line(s), expected {expected}; "
                             "update kei_gateway/tools/units.py with the unit")
    text = re.sub(r"^\[", "\n[", text, flags=re.MULTILINE).lstrip("\n")
    return HEADER + "\n" + text + "\n"


def main() -> int:
    sys.stdout.write(template_unit(PLAIN_UNIT.read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
