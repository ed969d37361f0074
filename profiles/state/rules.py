"""What part of an engine's user-data-dir is identity, and what is cache or machine-local.

The rules are data: a pattern without ``/`` matches any path component by name (so ``Cache``
leaves out ``Default/Cache`` and all below it); a pattern with ``/`` matches a path prefix
from the top of the profile. ``engine_locks`` are the lock files a browser leaves behind when
it dies; they are removed before launch and never packed.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath
from typing import Literal, get_args

__all__ = ["ENGINES", "RULES", "Engine", "StateRules"]

Engine = Literal["chromium", "firefox", "webkit"]
ENGINES: tuple[Engine, ...] = get_args(Engine)


@dataclass(frozen=True)
class StateRules:
    engine: Engine
    exclude: tuple[str, ...]
    engine_locks: tuple[str, ...]

    @cached_property
    def _name_pattern(self) -> re.Pattern[str]:
        names = [p for p in self.exclude if "/" not in p] + list(self.engine_locks)
        return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in names))

    @cached_property
    def _prefixes(self) -> tuple[str, ...]:
        return tuple(p for p in self.exclude if "/" in p)

    @cached_property
    def _lock_pattern(self) -> re.Pattern[str] | None:
        if not self.engine_locks:
            return None
        return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in self.engine_locks))

    def excludes_entry(self, relpath: str, name: str) -> bool:
        """Whether the entry ``name`` at ``relpath`` is left out, given that its parent
        directory is not (what a top-down walk knows)."""
        if self._name_pattern.match(name):
            return True
        return any(relpath == p or relpath.startswith(p + "/") for p in self._prefixes)

    def excludes(self, relpath: PurePosixPath | str) -> bool:
        """Whether ``relpath`` (relative to the profile root) is left out of a pack."""
        parts = PurePosixPath(relpath).parts
        return any(
            self.excludes_entry("/".join(parts[: i + 1]), part) for i, part in enumerate(parts)
        )

    def is_engine_lock(self, name: str) -> bool:
        return self._lock_pattern is not None and self._lock_pattern.match(name) is not None


RULES: dict[Engine, StateRules] = {
    "chromium": StateRules(
        engine="chromium",
        exclude=(
            # caches
            "Cache",
            "Code Cache",
            "GPUCache",
            "*ShaderCache",
            "GraphiteDawnCache",
            "Dawn*Cache",
            "GPUPersistentCache",
            "Media Cache",
            "blob_storage",
            "DawnWebGPUCache",
            # crash reports and metrics
            "Crashpad",
            "BrowserMetrics*",
            "DeferredBrowserMetrics",
            # downloaded components: the browser fetches them again
            "component_crx_cache",
            "extensions_crx_cache",
            "optimization_guide_*",
            "OptimizationGuideModelsManifest",
            "OnDeviceHeadSuggestModel",
            "Safe Browsing",
            "CertificateRevocation",
            "hyphen-data",
            "MEIPreload",
            "SSLErrorAssistant",
            "Subresource Filter",
            "FileTypePolicies",
            "ZxcvbnData",
            "TrustTokenKeyCommitments",
            "OriginTrials",
            "PKIMetadata",
            "FirstPartySetsPreloaded",
            "WidevineCdm",
            "Crowd Deny",
            "AutofillStates",
            "ClientSidePhishing",
            "CookieReadinessList",
            "PrivacySandboxAttestationsPreloaded",
            "ProbabilisticRevealTokenRegistry",
            "TpcdMetadata",
            "Webstore Downloads",
            "segmentation_platform",
            "screen_ai",
            "Variations",
        ),
        # DevToolsActivePort: the debugging port of a run (a service's remote session),
        # machine-local and stale once the browser exits, like the locks.
        engine_locks=("Singleton*", "lockfile", "DevToolsActivePort"),
    ),
    "firefox": StateRules(
        engine="firefox",
        exclude=(
            "cache2",
            "startupCache",
            "thumbnails",
            "safebrowsing",
            "shader-cache",
            "crashes",
            "minidumps",
            "datareporting",
            "saved-telemetry-pings",
            "storage/temporary",
            "storage/to-be-removed",
            "*-shm",
        ),
        engine_locks=("lock", ".parentlock", "parent.lock"),
    ),
    "webkit": StateRules(
        engine="webkit",
        exclude=("NetworkCache", "Cache", "MediaCache"),
        engine_locks=(),
    ),
}
