"""Policy types: built-ins, entry-point plugins and package.module:ClassName."""

from __future__ import annotations

import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

import policies.builtin as builtin
import policies.registry as registry
from policies import (
    Policy,
    PolicyConfigError,
    TraceView,
    Verdict,
    build_engine,
    installed_policies,
    load_policy_class,
)
from policies.builtin import Latency
from tests.policies.traces import batch, make_span, view


class TenantConfig(BaseModel):
    """Fields of the plugin below."""

    model_config = ConfigDict(extra="forbid")
    tenant: str


class KeepTenant(Policy):
    """A tiny plugin: keep traces whose resource has ``tenant.id`` = the configured tenant."""

    Config: ClassVar[type[BaseModel]] = TenantConfig

    def __init__(self, name: str, config: TenantConfig) -> None:
        super().__init__(name, config)
        self.tenant = config.tenant

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        if self.tenant in trace.attribute_values("tenant.id"):
            return Verdict.SAMPLED
        return Verdict.NOT_SAMPLED


class NotAPolicy:
    """Anything that is not a Policy subclass."""


PLUGIN = f"{__name__}:KeepTenant"


def test_builtins_by_name() -> None:
    # The Collector's tail_sampling set (without ottl_condition), same names.
    builtins = {
        "always_sample": builtin.AlwaysSample,
        "and": builtin.And,
        "boolean_attribute": builtin.BooleanAttribute,
        "bytes_limiting": builtin.BytesLimiting,
        "composite": builtin.Composite,
        "drop": builtin.Drop,
        "latency": builtin.Latency,
        "numeric_attribute": builtin.NumericAttribute,
        "probabilistic": builtin.Probabilistic,
        "rate_limiting": builtin.RateLimiting,
        "span_count": builtin.SpanCount,
        "status_code": builtin.StatusCode,
        "string_attribute": builtin.StringAttribute,
        "trace_state": builtin.TraceState,
    }
    installed = installed_policies()
    assert {name: installed[name] for name in builtins} == builtins
    assert set(builtin.__all__) == {cls.__name__ for cls in builtins.values()}
    assert load_policy_class("latency") is Latency


def test_pyproject_declares_every_builtin() -> None:
    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["entry-points"]["caudal.policies"]
    assert declared == registry._BUILTIN_POLICIES


def test_plugin_by_import_path() -> None:
    assert load_policy_class(PLUGIN) is KeepTenant
    engine = build_engine([{"name": "acme", "type": PLUGIN, "tenant": "acme"}])
    acme = view(batch([make_span()], {"tenant.id": "acme"}))
    assert engine.decide(acme, 0.0).policy == "acme"
    assert not engine.decide(view(make_span()), 0.0).kept


def test_plugin_fields_are_validated_like_builtins() -> None:
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "acme", "type": PLUGIN}])
    assert caught.value.errors == [((0, "tenant"), "Field required")]


@pytest.mark.parametrize(
    ("type_name", "fragment"),
    [
        (
            "nope",
            "unknown policy type 'nope'; installed: always_sample, and, boolean_attribute",
        ),
        ("no_such_module_xyz:Thing", "cannot import 'no_such_module_xyz'"),
        (f"{__name__}:Missing", "has no attribute 'Missing'"),
        (f"{__name__}:NotAPolicy", "is not a subclass of policies.Policy"),
        (":Thing", "expected package.module:ClassName"),
    ],
)
def test_bad_types_say_what_is_wrong(type_name: str, fragment: str) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        load_policy_class(type_name)
    assert fragment in str(caught.value)
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "x", "type": type_name}])
    assert [loc for loc, _ in caught.value.errors] == [(0, "type")]


def test_entry_point_plugins_are_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_entry_points(group: str) -> list[EntryPoint]:
        assert group == "caudal.policies"
        return [
            EntryPoint("keep_tenant", PLUGIN, group),
            EntryPoint("latency", f"{__name__}:KeepTenant", group),  # cannot shadow a built-in
        ]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_loaded", {})
    registry._policy_targets.cache_clear()
    try:
        assert load_policy_class("keep_tenant") is KeepTenant
        assert installed_policies()["latency"] is Latency
        assert "keep_tenant" in installed_policies()
    finally:
        registry._policy_targets.cache_clear()
