"""The one error type of the policy package: every configuration mistake, with its key path."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ErrorLocation", "PolicyConfigError"]

ErrorLocation = tuple[str | int, ...]


class PolicyConfigError(ValueError):
    """A policy list (or one policy type) that cannot be used, with every problem found.

    ``errors`` holds ``(location, message)`` pairs; a location is relative to the policy list,
    e.g. ``(3, "threshold_ms")``. ``str()`` gives one line per error, prefixed with the key path
    as ``caudal validate`` prints it: ``policies.3.threshold_ms: Input should be ...``.
    """

    def __init__(self, errors: Iterable[tuple[ErrorLocation, str]]) -> None:
        self.errors: list[tuple[ErrorLocation, str]] = list(errors)
        super().__init__("\n".join(_render(loc, msg) for loc, msg in self.errors))


def _render(location: ErrorLocation, message: str) -> str:
    path = ".".join(["policies", *(str(part) for part in location)])
    return f"{path}: {message}"
