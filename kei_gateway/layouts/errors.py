"""Validation errors as values with a place, and masking of personal values."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LayoutError", "InvalidFileError", "mask"]


def mask(value: str) -> str:
    """Hide a personal value for logs: keep at most its last 4 characters (``****5678``).

    Values shorter than 8 characters are hidden completely (``****``), so a
    4-digit 一連番号 or a short name never shows.
    """
    return "****" + value[-4:] if len(value) >= 8 else "****"


@dataclass(frozen=True)
class LayoutError:
    """One problem in a record file.

    ``reason`` is plain words and never contains a personal value; the
    offending value travels separately in ``value`` and is shown masked by
    :meth:`message` unless ``full_values`` is asked for (only for the
    quarantine errors file meant for the tax division).
    """

    record: int | None
    """1-based record number; ``None`` when the problem is the file as a whole."""
    offset: int
    """Byte offset in the file where the problem starts."""
    reason: str
    field_name: str | None = None
    """The field's Japanese name (項目)."""
    key: str | None = None
    """The field's key."""
    value: str | None = None
    """The offending value as read (after decoding), if it helps."""
    personal: bool = False
    """Whether ``value`` is personal and must be masked outside the quarantine file."""

    def shown_value(self, *, full_values: bool = False) -> str | None:
        if self.value is None:
            return None
        return self.value if full_values or not self.personal else mask(self.value)

    def message(self, *, full_values: bool = False) -> str:
        """``record 3, byte 140: 全国地方公共団体コード (lg_code): check digit should be 1, got 0``."""
        place = "file" if self.record is None else f"record {self.record}"
        text = f"{place}, byte {self.offset}: "
        if self.key is not None:
            text += f"{self.field_name} ({self.key}): "
        text += self.reason
        shown = self.shown_value(full_values=full_values)
        if shown is not None:
            text += f" [value {shown!r}]"
        return text

    def as_dict(self, *, full_values: bool = False) -> dict[str, object]:
        """JSON-ready form (``--json``); values masked unless ``full_values``."""
        return {
            "record": self.record,
            "offset": self.offset,
            "field": self.field_name,
            "key": self.key,
            "reason": self.reason,
            "value": self.shown_value(full_values=full_values),
        }


class InvalidFileError(ValueError):
    """Raised by the parser when a record is invalid; carries the errors of that record."""

    def __init__(self, errors: list[LayoutError]) -> None:
        self.errors = errors
        super().__init__("; ".join(error.message() for error in errors))
