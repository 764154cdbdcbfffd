"""README's configuration table, generated from the models (streams.devtools.readme writes it).

One row per key a user can set: its default, whether a running worker applies a change on
reload, and what it means. A mapping of named entries (`tenants`, `exporters`) gets a row of its
own and rows for an entry's keys under `NAME`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from streams.config.changes import field_model, is_reloadable
from streams.config.models import Settings
from streams.config.units import format_duration, format_size, parse_duration, parse_size

__all__ = ["config_rows", "config_table"]

Row = tuple[str, str, bool, str]


def config_rows(
    model: type[BaseModel] = Settings, prefix: str = "", reload: bool = False
) -> Iterator[Row]:
    """(key path, default, applied on reload, meaning) for every key under `model`."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        applies = reload or is_reloadable(info)
        inner = field_model(info.annotation)
        if isinstance(inner, type):
            yield from config_rows(inner, f"{path}.", applies)
            continue
        yield path, _default(info), applies, info.description or ""
        entry = inner[1] if isinstance(inner, tuple) else None
        if isinstance(entry, type) and issubclass(entry, BaseModel):
            # dict[str, Model]: the keys of one named entry
            yield from config_rows(entry, f"{path}.NAME.", applies)


def _default(info: FieldInfo) -> str:
    extra = info.json_schema_extra
    if isinstance(extra, dict) and "shown_default" in extra:
        return str(extra["shown_default"])
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "none"
    validators = {getattr(item, "func", None) for item in info.metadata}
    if parse_duration in validators:
        return f"`{format_duration(value)}`"
    if parse_size in validators:
        return f"`{format_size(value)}`"
    return f"`{_flow(value)}`"


def _flow(value: Any) -> str:
    """A value in YAML flow style, as a user would write it."""
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_defaults=True)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if value == "":
        return "''"
    return str(value)


def config_table() -> str:
    """The markdown table, header included."""
    lines = ["| key | default | on reload | meaning |", "|---|---|---|---|"]
    for path, default, applies, meaning in config_rows():
        lines.append(
            f"| `{path}` | {default} | {'applied' if applies else 'restart'} | {meaning} |"
        )
    return "\n".join(lines)
