"""What part of an engine's user-data-dir is identity, and what is cache or machine-local.

The rules are data: a pattern without ``/`` matches any path component by name (so ``Cache``
leaves out ``Default/Cache`` and all below it); a pattern with ``/`` matches a path prefix
from the top of the profile. ``engine_locks`` are the lock files a browser leaves behind when
it dies; they are removed before launch and never packed.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
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

    def _matches(self, parts: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
        path = "/".join(parts)
        for pattern in patterns:
            if "/" in pattern:
                if path == pattern or path.startswith(pattern + "/"):
                    return True
            elif any(fnmatchcase(part, pattern) for part in parts):
                return True
        return False

    def excludes(self, relpath: PurePosixPath | str) -> bool:
        """Whether ``relpath`` (relative to the profile root) is left out of a pack."""
        parts = PurePosixPath(relpath).parts
        return self._matches(parts, self.exclude) or self._matches(parts[-1:], self.engine_locks)

    def is_engine_lock(self, name: str) -> bool:
        return any(fnmatchcase(name, pattern) for pattern in self.engine_locks)


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
        engine_locks=("Singleton*", "lockfile"),
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
