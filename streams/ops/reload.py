"""Reload on SIGHUP or when the config file changes: what a running worker can apply, it does;
what needs a restart, it says, key by key.

Applied on reload (fields marked `RELOAD` in streams.config): the global and per-tenant
policies, tenants' quotas (`quota_spans_per_second`, `quota_burst_spans`, `quota_action`) and
redaction, the global redaction and `unknown_tenant`. Buffered traces stay where they are and
are decided once, by whatever is current when their window closes. Anything else (Kafka, the
decision window, exporters, a tenant's exporters, a new tenant) is logged as needing a restart.
A file that does not validate is rejected with every error logged, and nothing changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
from pathlib import Path

from streams.config import ConfigError, ConfigSource, Settings, applies_on_reload, changed_keys
from streams.ops.health import Health
from streams.ops.metrics import CONFIG_RELOADS
from streams.pipeline.decide import Decider, PolicySets
from streams.pipeline.route import TenantRoutes

__all__ = ["PolicyReloader", "config_version"]

log = logging.getLogger(__name__)


def config_version(path: Path | None) -> str:
    """A short digest of the config file, so /status shows which file a worker runs."""
    if path is None:
        return "defaults"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "unreadable"


class PolicyReloader:
    """Watch the config file (and SIGHUP); apply what can be applied, report the rest."""

    def __init__(
        self,
        source: ConfigSource,
        decider: Decider,
        settings: Settings,
        health: Health | None = None,
    ) -> None:
        assert source.path is not None, "a reload needs a file"
        self.source = source
        self.path = source.path
        self.decider = decider
        # What the process started with: a change that needs a restart is reported until then.
        self.settings = settings
        self.health = health
        self.mtime = self._mtime()
        self.reloads = 0

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    async def watch(self) -> None:
        """The reload-policies timer."""
        self.check()

    async def listen_for_sighup(self) -> None:
        """A task of the app: SIGHUP reloads."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")

    def check(self) -> None:
        """Reload if the file changed since it was last read."""
        mtime = self._mtime()
        if mtime != self.mtime:
            self.mtime = mtime
            self.reload("file changed")

    def reload(self, reason: str) -> list[str]:
        """Validate the file again and apply it; the changed keys that need a restart."""
        try:
            new = self.source.load(read_tokens=False)
        except ConfigError as exc:
            CONFIG_RELOADS.labels("failure").inc()
            for path, message in exc.errors:
                log.error("config reload rejected reason=%r key=%s error=%r", reason, path, message)
            log.error("config reload rejected, nothing changed file=%s", self.path)
            return []
        changed = changed_keys(self.settings, new)
        policy_sets = PolicySets.from_settings(new)
        for path, adopted in policy_sets.adopt_state(self.decider.policy_sets).items():
            if not adopted:
                log.warning("policy starts with fresh state (its key changed) policy=%s", path)
        old = self.decider.policy_sets
        if old.owned is not None:
            policy_sets.set_partitions(old.owned, old.total)
        self.decider.policy_sets = policy_sets
        routes = TenantRoutes(new)
        routes.set_share(self.decider.routes.share)
        self.decider.routes = routes  # quotas (buckets start full), redaction, unknown_tenant
        self.reloads += 1
        CONFIG_RELOADS.labels("success").inc()
        if self.health is not None:
            self.health.reloads = self.reloads
            self.health.config_version = config_version(self.path)
        restart = [key for key in changed if not applies_on_reload(key)]
        log.info(
            "config reloaded reason=%r policies=%d tenant_sets=%d applied=%s",
            reason,
            len(new.policies),
            len(self.decider.policy_sets.by_tenant),
            ",".join(k for k in changed if applies_on_reload(k)) or "-",
        )
        if restart:
            log.warning("changes need a restart to apply keys=%s", ",".join(restart))
        return restart
