"""Loading: read the file, apply the environment and command-line overrides, validate once.

Overrides are applied to the document before validation, so a value given as `--bootstrap` or
`CAUDAL_BOOTSTRAP_SERVERS` is checked exactly as one written in the file. Every error is
reported with its key path, all at once, so a user fixes a file in one pass.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streams.config.checks import cross_check, key_path
from streams.config.models import Settings

__all__ = ["ConfigError", "ConfigSource", "load_settings", "validate_mapping"]

_ENV_OVERRIDES = {
    "CAUDAL_BOOTSTRAP_SERVERS": "kafka.bootstrap_servers",
    "CAUDAL_INPUT_TOPIC": "kafka.input_topic",
}


class ConfigError(ValueError):
    """A configuration file was rejected; `errors` holds (key path, message) pairs."""

    def __init__(self, source: str, errors: list[tuple[str, str]]) -> None:
        self.source = source
        self.errors = errors
        lines = [f"{source}: {len(errors)} error(s)"]
        lines += [f"  {path}: {message}" for path, message in errors]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ConfigSource:
    """Where a process's configuration comes from: a file (or none) and the command line's
    overrides. A reload reads the file again with the same overrides."""

    path: Path | None = None
    overrides: Mapping[str, object] = field(default_factory=dict)

    def load(self, read_tokens: bool = True, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the configuration as it is now."""
        return load_settings(self.path, environ, read_tokens, self.overrides)


def load_settings(
    path: str | Path | None,
    environ: Mapping[str, str] | None = None,
    read_tokens: bool = True,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Read, apply CAUDAL_* variables and `overrides`, and validate; no file: the defaults.

    `overrides` maps key paths (`kafka.bootstrap_servers`) to values, as the command line gives
    them; they win over the environment, which wins over the file. `read_tokens=False` leaves
    `ingest.tokens_file` unread: only the gateway needs the tokens, so workers need not see
    the Secret that holds them.
    """
    environ = os.environ if environ is None else environ
    source = str(path) if path else "<defaults>"
    raw = _read(path, source)
    if isinstance(raw, dict):
        raw = _apply_overrides(raw, _environment_overrides(environ))
        given = {tuple(key.split(".")): value for key, value in (overrides or {}).items()}
        raw = _apply_overrides(raw, given)
        if read_tokens:
            raw = _read_tokens_file(raw, source)
    return validate_mapping(raw, source)


def validate_mapping(raw: object, source: str = "<config>") -> Settings:
    """Validate a parsed YAML document; raise ConfigError with every problem found."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [("(top level)", "expected a mapping of sections")])
    settings, errors, failed = _validate_structure(raw)
    if settings is not None:
        errors += cross_check(settings, failed)
    if errors or settings is None:
        raise ConfigError(source, errors)
    return settings


def _validate_structure(
    raw: dict[str, Any],
) -> tuple[Settings | None, list[tuple[str, str]], list[str]]:
    """Validate types and bounds; on errors, validate again without the entries in error.

    The second pass gives typed settings to cross-check the rest of the file against, so a
    bad `decision.wait` does not hide an unknown exporter. An entry is dropped at the depth of
    a section's key (`decision.wait`, `tenants.acme`); if that is not enough, the section.
    """
    context = {"checked_by_loader": True}
    errors: list[tuple[str, str]] = []
    failed: list[str] = []
    document = raw
    for depth in (2, 1):
        try:
            return Settings.model_validate(document, context=context), errors, failed
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(err["loc"])
                if depth == 2:
                    errors.append((key_path(loc), err["msg"].removeprefix("Value error, ")))
                failed.append(key_path(loc[:depth]))
            document = _without(document, failed)
    try:
        return Settings.model_validate(document, context=context), errors, failed
    except ValidationError:
        return None, errors, failed


def _without(raw: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    document = copy.deepcopy(raw)
    for path in paths:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return document


def _read(path: str | Path | None, source: str) -> object:
    if not path:
        return {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, [("(file)", f"cannot read: {exc.strerror}")]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [("(file)", f"not valid YAML: {exc}")]) from exc
    return {} if raw is None else raw


def _environment_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], object]:
    """CAUDAL_* variables override the Kafka section (so secrets stay out of the file)."""
    overrides: dict[tuple[str, ...], object] = {
        tuple(key.split(".")): environ[variable]
        for variable, key in _ENV_OVERRIDES.items()
        if environ.get(variable)
    }
    for variable, value in environ.items():
        # CAUDAL_SECURITY_SASL_USERNAME -> kafka.security["sasl.username"]
        if variable.startswith("CAUDAL_SECURITY_") and value:
            name = variable.removeprefix("CAUDAL_SECURITY_").lower().replace("_", ".")
            overrides[("kafka", "security", name)] = value
    return overrides


def _apply_overrides(
    raw: dict[str, Any], overrides: Mapping[tuple[str, ...], object]
) -> dict[str, Any]:
    """Set each key path (a tuple: a mapping's own keys, such as `sasl.username`, hold dots).

    Where the file holds something other than a mapping on the way, the override is not
    applied: validation then reports the file's own mistake at its key path.
    """
    document = copy.deepcopy(raw)
    for parts, value in overrides.items():
        node: dict[str, Any] | None = document
        for part in parts[:-1]:
            assert node is not None
            child = node.get(part)
            if child is None:  # absent, or `kafka:` with nothing under it
                child = node[part] = {}
            node = child if isinstance(child, dict) else None
            if node is None:
                break
        if node is not None:
            node[parts[-1]] = value
    return document


def _read_tokens_file(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge `ingest.tokens_file` into `ingest.tokens` (tokens stay out of the main file)."""
    ingest = raw.get("ingest")
    path = ingest.get("tokens_file") if isinstance(ingest, dict) else None
    if not isinstance(path, str):
        return raw
    key = "ingest.tokens_file"
    try:
        tokens = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(source, [(key, f"cannot read {path}: {exc.strerror}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(source, [(key, f"{path} is not valid YAML: {exc}")]) from exc
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()
    ):
        raise ConfigError(source, [(key, f"{path} must map each token to a tenant name")])
    assert isinstance(ingest, dict)
    merged = {**tokens, **(ingest.get("tokens") or {})}
    return {**raw, "ingest": {**ingest, "tokens": merged}}
