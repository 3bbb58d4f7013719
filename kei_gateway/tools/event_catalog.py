"""Documents generated from the event declarations: the journald message catalog and docs/events.md.

::

    python -m kei_gateway.tools.event_catalog catalog   > systemd/kei-gateway.catalog
    python -m kei_gateway.tools.event_catalog events-md > docs/events.md
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable


from kei_gateway.runtime import events
from kei_gateway.runtime.journal import SYSLOG_IDENTIFIER, journal_priority

__all__ = ["CATALOG_SUPPORT", "catalog_text", "events_markdown", "main"]


CATALOG_SUPPORT = "docs/operations.md and README.md (section 'Logs (journald)') of kei-gateway"
"""The ``Support:`` line of every catalog entry (no public URL exists yet)."""
# --- generated documents -------------------------------------------------------


def _without_final_stop(text: str) -> str:
    return text[:-1] if text.endswith((".", "。")) else text


def _catalog_entry(event: events.EventType, language: str | None) -> str:
    japanese = language == "ja"
    header = f"-- {event.message_id}" + (f" {language}" if language else "")
    summary = event.summary_ja if japanese else event.summary_en
    remedy = event.remedy_ja if japanese else event.remedy_en
    if japanese:
        body = [
            summary,
            "",
            f"イベント: {event.name}（KEI_EVENT={event.name}、レベル {event.level.name}）",
            "",
            f"対処: {remedy}",
        ]
    else:
        body = [
            summary,
            "",
            f"Event: {event.name} (KEI_EVENT={event.name}, level {event.level.name})",
            "",
            f"What to do: {remedy}",
        ]
    return "\n".join(
        [
            header,
            f"Subject: {_without_final_stop(summary)}",
            f"Defined-By: {SYSLOG_IDENTIFIER}",
            f"Support: {CATALOG_SUPPORT}",
            "",
            *body,
        ]
    )


def catalog_text(event_types: Iterable[events.EventType] = events.ALL_EVENTS) -> str:
    """The journald message catalog for *event_types*: an English and a Japanese entry each.

    Installed as ``/usr/lib/systemd/catalog/kei-gateway.catalog`` and compiled
    by ``journalctl --update-catalog``; ``journalctl -x`` then shows the entry
    in the reader's language (``LANG=ja_JP.UTF-8`` → Japanese).
    """
    entries = []
    for event in event_types:
        entries.append(_catalog_entry(event, None))
        entries.append(_catalog_entry(event, "ja"))
    head = (
        "#  kei-gateway journald message catalog: English and Japanese (ja) entries.\n"
        "#  Generated from kei_gateway/runtime/events.py by\n"
        "#  'python -m kei_gateway.tools.event_catalog catalog'; do not edit by hand.\n"
    )
    return head + "\n" + "\n\n".join(entries) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def events_markdown(event_types: Iterable[events.EventType] = events.ALL_EVENTS) -> str:
    """``docs/events.md``: every event with its MESSAGE_ID, level, message and remedy."""
    lines = [
        "# Log events",
        "",
        "<!-- Generated from kei_gateway/runtime/events.py by 'python -m kei_gateway.tools.event_catalog events-md';"
        " do not edit by hand. -->",
        "",
        "Every journald entry of kei-gateway carries `KEI_EVENT` (the name below) and",
        "`MESSAGE_ID`. Select one kind with e.g.",
        "`journalctl -u kei-gateway KEI_EVENT=listener.denied` or",
        "`journalctl -u kei-gateway MESSAGE_ID=4984db45de834d8fae112f5626428021`;",
        "`journalctl -x` adds the explanation and remedy below, in Japanese when `LANG=ja_JP.UTF-8`.",
        "Lines from libraries (Twisted, SQLAlchemy …) carry the generic `message` event.",
        "",
        "| event (`KEI_EVENT`) | `MESSAGE_ID` | level (`PRIORITY`) | message |",
        "|---|---|---|---|",
    ]
    event_types = tuple(event_types)
    for event in event_types:
        lines.append(
            f"| `{event.name}` | `{event.message_id}` | {event.level.name} ({journal_priority(event.level)}) "
            f"| `{_cell(event.format)}` |"
        )
    for event in event_types:
        lines += [
            "",
            f"## `{event.name}`",
            "",
            f"- {_cell(event.summary_en)} {_cell(event.remedy_en)}",
            f"- {_cell(event.summary_ja)} {_cell(event.remedy_ja)}",
        ]
    return "\n".join(lines) + "\n"


_GENERATORS: dict[str, Callable[[], str]] = {"catalog": catalog_text, "events-md": events_markdown}


def main(argv: list[str] | None = None) -> int:
    """``python -m kei_gateway.tools.event_catalog catalog|events-md``: print a generated document."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in _GENERATORS:
        print("usage: python -m kei_gateway.tools.event_catalog catalog|events-md", file=sys.stderr)
        return 2
    sys.stdout.write(_GENERATORS[args[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
