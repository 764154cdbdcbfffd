"""Where policy types come from: the built-ins, plugins registered under the entry-point
group ``caudal.policies``, or a class named directly as ``package.module:ClassName``."""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import Final

from pydantic import BaseModel

from policies.errors import PolicyConfigError
from policies.model import Policy

__all__ = ["ENTRY_POINT_GROUP", "installed_policies", "load_policy_class"]

ENTRY_POINT_GROUP: Final = "caudal.policies"

# The same table pyproject.toml declares, so a source checkout (not pip-installed) works too.
_BUILTIN_POLICIES: Final = {
    "always_sample": "policies.builtin.always_sample:AlwaysSample",
    "and": "policies.builtin.and_policy:And",
    "boolean_attribute": "policies.builtin.boolean_attribute:BooleanAttribute",
    "bytes_limiting": "policies.builtin.bytes_limiting:BytesLimiting",
    "composite": "policies.builtin.composite:Composite",
    "drop": "policies.builtin.drop:Drop",
    "ema_dynamic": "policies.builtin.ema_dynamic:EmaDynamic",
    "ema_throughput": "policies.builtin.ema_throughput:EmaThroughput",
    "latency": "policies.builtin.latency:Latency",
    "numeric_attribute": "policies.builtin.numeric_attribute:NumericAttribute",
    "probabilistic": "policies.builtin.probabilistic:Probabilistic",
    "rate_limiting": "policies.builtin.rate_limiting:RateLimiting",
    "span_count": "policies.builtin.span_count:SpanCount",
    "status_code": "policies.builtin.status_code:StatusCode",
    "string_attribute": "policies.builtin.string_attribute:StringAttribute",
    "trace_state": "policies.builtin.trace_state:TraceState",
    "windowed_throughput": "policies.builtin.windowed_throughput:WindowedThroughput",
}

# The registry cache: type name -> class, filled on first use of each type.
_loaded: dict[str, type[Policy]] = {}


def load_policy_class(type_name: str) -> type[Policy]:
    """Return the policy class for a ``type:`` value.

    ``type_name`` is a built-in or entry-point name (``latency``) or an import path
    (``package.module:ClassName``). Raises :class:`PolicyConfigError` naming the installed
    types when it is neither, or when the class cannot be imported or is not a policy.
    """
    cached = _loaded.get(type_name)
    if cached is not None:
        return cached
    targets = _policy_targets()
    target = targets.get(type_name)
    if target is None:
        if ":" not in type_name:
            raise PolicyConfigError(
                [
                    (
                        (),
                        f"unknown policy type {type_name!r}; installed: "
                        f"{', '.join(sorted(targets))} (or name a plugin class as "
                        "package.module:ClassName)",
                    )
                ]
            )
        target = type_name
    policy_class = _import_policy(type_name, target)
    _loaded[type_name] = policy_class
    return policy_class


def installed_policies() -> dict[str, type[Policy]]:
    """Return every policy type usable by name (built-ins and entry points), sorted by name.

    Raises :class:`PolicyConfigError` if a registered plugin cannot be loaded.
    """
    return {name: load_policy_class(name) for name in sorted(_policy_targets())}


@functools.cache
def _policy_targets() -> dict[str, str]:
    targets = dict(_BUILTIN_POLICIES)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        # A plugin cannot silently replace a built-in: configs must mean the same everywhere.
        targets.setdefault(entry_point.name, entry_point.value)
    return targets


def _import_policy(type_name: str, target: str) -> type[Policy]:
    module_name, _, attribute_path = target.partition(":")
    where = f"policy type {type_name!r}"
    if not module_name or not attribute_path:
        raise PolicyConfigError([((), f"{where}: expected package.module:ClassName")])
    try:
        found: object = importlib.import_module(module_name)
    except Exception as exc:  # a plugin's import can fail in any way; report, don't crash
        raise PolicyConfigError([((), f"{where}: cannot import {module_name!r}: {exc}")]) from exc
    for part in attribute_path.split("."):
        try:
            found = getattr(found, part)
        except AttributeError as exc:
            message = f"{where}: {module_name!r} has no attribute {attribute_path!r}"
            raise PolicyConfigError([((), message)]) from exc
    if not (isinstance(found, type) and issubclass(found, Policy)):
        message = f"{where}: {target!r} is not a subclass of policies.Policy"
        raise PolicyConfigError([((), message)])
    config = getattr(found, "Config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        message = f"{where}: {target}.Config must be a pydantic BaseModel subclass"
        raise PolicyConfigError([((), message)])
    return found
