"""Checks across keys, on the typed settings: policy lists, routes, tenant names and sources.

Each problem comes with its key path. `failed` names key paths the loader had to replace by
their defaults (they did not validate, and are reported already); a check that would read one
of them is skipped, so one mistake is never reported twice under two names.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from policies import PolicyConfigError, build_engine
from streams.wire.tracekey import tenant_problem

if TYPE_CHECKING:
    from streams.config.models import Settings

__all__ = ["cross_check", "key_path"]

Problem = tuple[str, str]

TENANT_SOURCE = re.compile(r"^(header|resource|baggage):[\w.\-]+$")


def key_path(loc: tuple[str | int, ...]) -> str:
    """`("tenants", "acme", "exporters", 0)` -> `tenants.acme.exporters.0`."""
    return ".".join(str(part) for part in loc) or "(top level)"


def cross_check(settings: Settings, failed: Collection[str] = ()) -> list[Problem]:
    """Every cross-key problem of `settings`, with its key path."""

    def usable(*paths: str) -> bool:
        return not any(p == f or p.startswith(f + ".") for p in paths for f in failed)

    problems: list[Problem] = []
    if usable("policies", "tenants"):
        problems += _policy_problems(settings)
    if usable("exporters"):
        # An exporter that did not validate is reported already: a route naming it is not.
        broken = {f.split(".")[1] for f in failed if f.startswith("exporters.")}
        problems += _route_problems(settings, broken)
    problems += _tenant_name_problems(settings)
    problems += [
        (
            f"tenant_from.{i}",
            f"{source!r} is not 'header:NAME', 'resource:ATTRIBUTE' or 'baggage:ENTRY'",
        )
        for i, source in enumerate(settings.tenant_from)
        if not TENANT_SOURCE.match(source)
    ]
    return problems


def _policy_problems(settings: Settings) -> list[Problem]:
    """The global policy list's errors, and every tenant's own list's."""
    problems = _engine_problems(("policies",), settings.policies, offset=0)
    for name, tenant in settings.tenants.items():
        if tenant.policies is None:
            continue
        prefix = ("tenants", name, "policies")
        if tenant.extends:
            # The tenant's entries follow the global ones: check them together (names must stay
            # unique) and report the tenant's own indexes.
            policies = [*settings.policies, *tenant.policies]
            problems += _engine_problems(prefix, policies, offset=len(settings.policies))
        else:
            problems += _engine_problems(prefix, tenant.policies, offset=0)
    return problems


def _engine_problems(
    prefix: tuple[str, ...], policies: list[dict[str, Any]], offset: int
) -> list[Problem]:
    try:
        build_engine(policies)
    except PolicyConfigError as exc:
        problems = []
        for loc, message in exc.errors:
            if offset and loc and isinstance(loc[0], int):
                if loc[0] < offset:
                    continue  # a global entry's error, reported under `policies`
                loc = (loc[0] - offset, *loc[1:])
            problems.append((key_path((*prefix, *loc)), message))
        return problems
    return []


def _route_problems(settings: Settings, broken: set[str]) -> list[Problem]:
    """Routes naming exporters that are not configured."""
    known = ", ".join(sorted(settings.exporters)) or "none"
    return [
        (f"tenants.{tenant}.exporters.{i}", f"unknown exporter {name!r} (configured: {known})")
        for tenant, route in settings.tenants.items()
        for i, name in enumerate(route.exporters)
        if name not in settings.exporters and name not in broken
    ]


def _tenant_name_problems(settings: Settings) -> list[Problem]:
    named = [(f"tenants.{name[:40]}", name) for name in settings.tenants]
    named.append(("default_tenant", settings.default_tenant))
    # Never print a token: the path names the section only.
    named += [("ingest.tokens", name) for name in settings.ingest.tokens.values()]
    problems = []
    for path, name in named:
        problem = tenant_problem(name)
        if problem is not None:
            problems.append((path, f"tenant {name[:40]!r}: {problem}"))
    return problems
