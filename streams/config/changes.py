"""What changed between two configurations, and whether a running worker applies each change.

A field marked `RELOAD` in the models is applied on reload, and so is everything below it;
any other changed key needs a restart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from streams.config.models import Settings

__all__ = ["applies_on_reload", "changed_keys"]

_MISSING = object()


def changed_keys(old: BaseModel, new: BaseModel) -> list[str]:
    """Key paths (`tenants.acme.exporters`) whose value differs between two configurations."""
    changed: list[str] = []

    def walk(a: Any, b: Any, path: tuple[str, ...]) -> None:
        if isinstance(a, dict) and isinstance(b, dict) and a.keys() | b.keys():
            for key in sorted(a.keys() | b.keys(), key=str):
                walk(a.get(key, _MISSING), b.get(key, _MISSING), (*path, str(key)))
        elif a != b:
            changed.append(".".join(path))

    walk(old.model_dump(), new.model_dump(), ())
    return changed


def applies_on_reload(key: str) -> bool:
    """Does a running worker apply a change of this key path on reload?"""
    model: Any = Settings
    for part in key.split("."):
        if model is None:
            return False
        fields = getattr(model, "model_fields", None)
        if fields is None:  # a mapping: the part is a name (a tenant, an exporter)
            model = _value_model(model)
            continue
        info = fields.get(part)
        if info is None:
            return False
        if is_reloadable(info):
            return True
        model = field_model(info.annotation)
    return False


def is_reloadable(info: Any) -> bool:
    """Is this field (a pydantic FieldInfo) marked `RELOAD`?"""
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("reload"))


def field_model(annotation: Any) -> Any:
    """The model class (or dict[str, Model] marker) a field holds, None for plain values."""
    origin = getattr(annotation, "__origin__", None)
    if origin is dict:
        return ("dict", annotation.__args__[1])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _value_model(marker: Any) -> Any:
    if isinstance(marker, tuple) and marker[0] == "dict":
        value = marker[1]
        return value if isinstance(value, type) and issubclass(value, BaseModel) else None
    return None
