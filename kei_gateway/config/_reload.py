"""What a reload cannot apply, derived from the schema's ``reload=`` declarations (no hand-written list)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from kei_gateway.config._load import Config
from kei_gateway.config._schema import FLOW_SECTIONS, RESTART, section_reload, section_settings

__all__ = ["restart_needed", "restart_keys"]


def _section_class(hint: Any) -> type | None:
    """The dataclass of a field's type (``Section`` or ``Section | None``), else None."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        classes = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        hint = classes[0] if len(classes) == 1 else None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _keys(owner: type, path: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    found: list[tuple[str, tuple[str, ...]]] = []
    hints = typing.get_type_hints(owner)
    settings = {key: meta for key, meta, _ in section_settings(owner)}
    for f in dataclasses.fields(owner):
        here = path + (f.name,)
        meta = settings.get(f.name)
        if meta is not None:  # a setting of a section
            if meta.reload == RESTART:
                found.append((".".join(here), here))
            continue
        if f.name == "flows":
            if any(section_reload(cls) == RESTART for cls in FLOW_SECTIONS.values()):
                found.append(("flows", here))
            continue
        section = _section_class(hints[f.name])
        if section is None:
            continue
        if section_reload(section) == RESTART:
            found.append((".".join(here), here))
        else:
            found += _keys(section, here)
    return found


def restart_keys() -> list[tuple[str, tuple[str, ...]]]:
    """Every key whose change needs a restart, in the order of the configuration, with its attribute path."""
    return _keys(Config, ())


def _value(config: Config, attrs: tuple[str, ...]) -> Any:
    value: Any = config
    for name in attrs:
        if value is None:
            return None
        value = getattr(value, name)
    return dict(value) if isinstance(value, typing.Mapping) else value


def restart_needed(old: Config, new: Config) -> list[str]:
    """Keys whose change a reload cannot apply (the process must restart), as the schema declares them."""
    return [key for key, attrs in restart_keys() if _value(old, attrs) != _value(new, attrs)]
