"""What a session does around the browser, shared by :class:`Session` and :class:`AsyncSession`.

No Playwright call lives here, so the sync and async front ends stay thin::

    prepare()  resolve or create the profile, find a browser, refuse a downgrade,
               take the writer lock, materialise the working directory, build launch options
    started()  record the use (usage_count, last_used_at, session.created)
    finish()   commit the closed browser's directory (or not), release the lock,
               record session.ended; clean up a read-only private copy

Over HTTP each step is one request where it can be: the lease grant carries the record the
checkout needs, the commit carries the lease's release and ``session.ended``, and a session
that commits nothing ends with one request that does both.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from driver.browsers import BrowserInstall, find_browser, major_version, probe_version
from profiles.archetypes import Archetype, get_archetype
from profiles.blobs.base import BlobStore
from profiles.catalog.base import Catalog
from profiles.engine_cache.cache import EngineCache
from profiles.engine_cache.fleet import fetch_shared, publish_shared, sharing_mode
from profiles.errors import (
    BrowserDowngrade,
    Conflict,
    LeaseLost,
    NotFound,
    ProfileError,
    StateCommitFailed,
    StorageUnavailable,
    ValidationFailed,
)
from profiles.models import HolderKind, Profile
from profiles.state.archive import remove_engine_locks
from profiles.store import ProfileStore
from profiles.workspace.locks import ReaderMark
from profiles.workspace.pending import state_identity
from profiles.workspace.scratch import OwnedDir

__all__ = ["SESSION_COOKIES_FILE", "LaunchPlan", "SaveMode", "SessionLifecycle", "SessionOptions"]

log = logging.getLogger(__name__)

SaveMode = Literal["always", "on_success", "never"]
# Chromium and Firefox drop cookies without an expiry on restart (Playwright issue 36139);
# the session keeps them in this file inside the profile's state and adds them back.
SESSION_COOKIES_FILE = "playwright-profiles-session-cookies.json"


PROXY_KEYS = ("server", "bypass", "username", "password")
# Options whose values may hold secrets (proxy credentials, headers): never quoted back.
_SECRET_OPTIONS = frozenset({"proxy", "launch_options"})


class _Releasable(Protocol):
    """The profile's writer lease as the session holds it (whatever ``store.lock`` returns):
    released at the end; its ``epoch`` fences the commit (``None``: unfenced)."""

    epoch: int | None

    def release(self) -> None: ...

    def ending(self) -> None: ...

    def forget(self) -> None: ...


class SessionOptions(BaseModel):
    """What a caller may set on a session; validated once, at construction.

    Build it with :meth:`build` to get :class:`~profiles.errors.ValidationFailed` (naming the
    option) instead of pydantic's ``ValidationError``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    headless: StrictBool = True
    readonly: StrictBool = False
    lock_timeout: float = Field(default=600.0, ge=0)
    start_url: StrictStr | None = None
    viewport: dict[str, StrictInt] | None = None
    proxy: dict[str, StrictStr] | None = None
    locale: StrictStr | None = None
    timezone_id: StrictStr | None = None
    user_agent: StrictStr | None = None
    args: tuple[StrictStr, ...] = ()
    create: StrictBool = True
    archetype: StrictStr | None = None
    save: SaveMode = "always"
    allow_downgrade: StrictBool = False
    keep_session_cookies: StrictBool = True
    commit_on_browser_close: StrictBool = False
    launch_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("viewport")
    @classmethod
    def _viewport_size(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is None:
            return None
        if set(value) != {"width", "height"}:
            raise ValueError(
                f"a viewport is {{'width': int, 'height': int}}, got the keys {sorted(value)}"
            )
        if min(value.values()) <= 0:
            raise ValueError("the viewport's width and height must be positive")
        return value

    @field_validator("proxy")
    @classmethod
    def _proxy_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(PROXY_KEYS))
        if unknown:
            raise ValueError(f"unknown proxy keys {unknown}; allowed: {', '.join(PROXY_KEYS)}")
        if not value.get("server"):
            raise ValueError(
                "a proxy needs a 'server' (e.g. 'http://proxy:3128'); 'bypass', 'username' "
                "and 'password' are optional"
            )
        return value

    @classmethod
    def build(cls, **values: Any) -> SessionOptions:
        """The options, or ``ValidationFailed`` naming the first bad one (``field``)."""
        try:
            return cls(**values)
        except pydantic.ValidationError as exc:
            raise _validation_failed(exc) from None


def _fleet_storage(store: ProfileStore) -> tuple[Catalog, BlobStore] | None:
    """The catalog and blob store under the store's service when other machines share them
    directly (PostgreSQL + S3) and the store may be written: where the fleet's engine
    caches are. None otherwise (the embedded store, a service over HTTP)."""
    if store.read_only or not store.service.shared:
        return None
    return store.service.storage()


def _cause(exc: ProfileError) -> str:
    """What failed, in a few words: a storage error's cause, else the error's code."""
    cause = exc.details.get("cause")
    return str(cause) if cause else f"{exc.code}: {exc.message}"


def _validation_failed(exc: pydantic.ValidationError) -> ValidationFailed:
    first = exc.errors(include_url=False)[0]
    loc = [str(part) for part in first.get("loc", ())]
    field_name = ".".join(loc) or "options"
    message = str(first.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if (loc and loc[0] in _SECRET_OPTIONS) or first.get("type") == "extra_forbidden":
        got = ""
    else:
        shown = repr(first.get("input"))
        got = f" (got {shown[:77] + '...' if len(shown) > 80 else shown})"
    return ValidationFailed(
        f"Invalid session option {field_name}: {message}{got}.", field=field_name
    )


def _merged(base: Any, extra: Any) -> Any:
    """``launch_options`` on top of what the session built: lists are added to (without
    repeats), mappings are merged key by key with ``extra`` winning, anything else replaces."""
    if isinstance(base, Mapping) and isinstance(extra, Mapping):
        return {**base, **extra}
    if isinstance(base, list | tuple) and isinstance(extra, list | tuple):
        return [*base, *(item for item in extra if item not in base)]
    return extra


@dataclass
class LaunchPlan:
    """Everything needed to call ``launch_persistent_context``."""

    engine: str
    user_data_dir: Path
    options: dict[str, Any]
    session_cookies: list[dict[str, Any]] = field(default_factory=list)


class SessionLifecycle:
    """The state machine of one session, minus the browser calls."""

    def __init__(
        self,
        profile: str,
        store: ProfileStore,
        options: SessionOptions,
        *,
        audit: Mapping[str, Any] | None = None,
        holder: HolderKind = "session",
    ) -> None:
        if not isinstance(profile, str) or not profile:
            raise ValidationFailed("profile must be a profile id or name.", field="profile")
        self.ref = profile
        #: Added to the payloads of ``session.created`` and ``session.ended`` (a service's
        #: remote sessions say ``remote: True`` and the account).
        self.audit: dict[str, Any] = dict(audit or {})
        #: What the writer lease says holds the profile (``profiles ps``).
        self.holder: HolderKind = holder
        #: How the session ended (``session.ended``'s payload), once :meth:`finish` ran.
        self.ended: dict[str, Any] | None = None
        self.store = store
        self.options = options
        self.profile: Profile | None = None
        self.browser: BrowserInstall | None = None
        self.archetype: Archetype | None = None
        self.lock: _Releasable | None = None
        self.user_data_dir: Path | None = None
        self._private_dir: OwnedDir | None = None
        self._engine_cache: EngineCache | None = None
        self._engine_key: str | None = None
        self._engine_cache_refused: str | None = None  # a shared cache this machine refused
        self._reader: ReaderMark | None = None
        self._started_at = 0.0
        self.browser_version: str | None = None
        self._base: str | None = None  # the committed state a writer session started from

    # ---------------------------------------------------------------- start

    def prepare(self) -> LaunchPlan:
        """Everything before the launch. On failure, undoes what it did and re-raises."""
        try:
            return self._prepare()
        except BaseException:
            self.abort()
            raise

    def _resolve_profile(self) -> Profile:
        try:
            profile = self.store.get(self.ref)
        except NotFound:
            # A read-only session writes nothing back, so it never creates a profile.
            if not self.options.create or self.options.readonly:
                raise
            similar = self._similar_names()
            try:
                created = self.store.create(self.ref, archetype=self.options.archetype)
            except Conflict:
                profile = self.store.get(self.ref)  # created by someone else meanwhile
            else:
                if similar:
                    log.warning(
                        "created new profile %r; did you mean %s?",
                        created.name,
                        " or ".join(repr(n) for n in similar),
                    )
                return created
        wanted = self.options.archetype
        if wanted is not None and wanted != profile.archetype:
            raise ValidationFailed(
                f"Profile {profile.name!r} is pinned to {profile.archetype!r}; archetype="
                f"{wanted!r} only applies to a profile the session creates. Clone it with "
                "the new archetype to repin.",
                field="archetype",
            )
        return profile

    def _similar_names(self) -> list[str]:
        """Existing profile names that look like a typo of the one being created."""
        try:
            return self.store.similar_names(self.ref)
        except ProfileError as exc:  # a hint only: never fail the session for it
            log.debug("could not look for similar profile names: %s", exc)
            return []

    def _prepare(self) -> LaunchPlan:
        profile = self._resolve_profile()
        self.archetype = get_archetype(profile.archetype)
        self.browser = find_browser(profile.browser_name)
        at_hand = probe_version(self.browser, self.store.home / "browser-versions.json")
        self._check_downgrade(profile, at_hand)  # fail before waiting for the lock...
        self._started_at = time.monotonic()
        if self.options.readonly:
            # A private copy in the home's scratch, owned (flock) by this process so that a
            # sweep never takes it while the session runs, and swept if the process dies.
            self._private_dir = OwnedDir(self.store.tmp_dir, "readonly-")
            self._reader = self.store.reader_mark(profile.id)
            parent = self._private_dir.path
            self.profile = self.store.private_copy(profile, parent / "state")
            self.user_data_dir = parent / "state"
        else:
            lock = self.store.lock(profile, timeout=self.options.lock_timeout, kind=self.holder)
            lock.acquire()
            self.lock = lock
            # Work a session left on this machine while the service was unreachable lands
            # first (or, when it conflicts, the session refuses to run on the older state).
            self.store.land_pending(profile.id, lock=lock)
            self.profile, self.user_data_dir = self.store.checkout(profile.id, lock=lock)
            self._base = state_identity(self.profile)
        self._check_downgrade(self.profile, at_hand)  # ...and again on what was committed since
        self._seed_engine_cache(profile, at_hand)
        removed = remove_engine_locks(self.user_data_dir, profile.browser_name)
        if removed:
            log.info("removed stale engine locks from %s: %s", profile.name, removed)
        return LaunchPlan(
            engine=profile.browser_name,
            user_data_dir=self.user_data_dir,
            options=self._launch_options(),
            session_cookies=self._load_session_cookies(),
        )

    def _seed_engine_cache(self, profile: Profile, at_hand: str | None) -> None:
        """Give a cold working copy the browser build's warm-up data (Firefox's
        startupCache) before launch. It holds no identity, and anything wrong with it only
        costs speed: nothing here fails a session. On a shared backend, a build this machine
        has no cache of is fetched from the fleet's first (profiles.engine_cache.fleet)."""
        if self.store.read_only or self.browser is None or self.user_data_dir is None:
            return
        try:
            self._engine_cache = EngineCache(self.store.home / "engine-cache")
            self._engine_key = self._engine_cache.build_key(
                profile.browser_name, at_hand or "unknown", Path(self.browser.executable_path)
            )
            shared = _fleet_storage(self.store)
            if shared is not None and sharing_mode() != "off":
                outcome = fetch_shared(
                    self._engine_cache,
                    *shared,
                    profile.browser_name,
                    self._engine_key,
                )
                self._engine_cache_refused = outcome.refused
            if self._engine_cache.seed(profile.browser_name, self._engine_key, self.user_data_dir):
                log.debug("seeded %s from the engine cache", profile.name)
        except (OSError, ProfileError, ValueError) as exc:
            log.debug("engine cache not used: %s", exc)
            self._engine_cache = None

    def _refresh_engine_cache(self) -> None:
        """After a clean session: keep this build's warm-up data if the cache lacks it, and
        on a shared backend publish what was kept when the fleet has none for the build
        (or only one this machine refused). Never from a read-only store, never when this
        machine opted out (PROFILES_ENGINE_CACHE_SHARING, see profiles.engine_cache.fleet)."""
        cache, key = self._engine_cache, self._engine_key
        if cache is None or key is None or self.profile is None or self.user_data_dir is None:
            return
        engine = self.profile.browser_name
        try:
            stored = cache.refresh(engine, key, self.user_data_dir)
        except (OSError, ProfileError, ValueError) as exc:
            log.debug("engine cache not refreshed: %s", exc)
            return
        shared = _fleet_storage(self.store)
        if stored and shared is not None and sharing_mode() == "on":
            publish_shared(
                cache,
                *shared,
                engine,
                key,
                replacing=self._engine_cache_refused,
            )

    def _check_downgrade(self, profile: Profile, at_hand: str | None) -> None:
        written_by = major_version(profile.browser_version)
        running = major_version(at_hand)
        if written_by is None or running is None or running >= written_by:
            return
        message = (
            f"Profile {profile.name!r} was last written by {profile.browser_name} "
            f"{profile.browser_version}, newer than the {at_hand} at hand "
            f"({self.browser.executable_path if self.browser else '?'}). Opening it with an "
            "older browser can corrupt it: upgrade the browser, or pass allow_downgrade=True."
        )
        if not self.options.allow_downgrade:
            raise BrowserDowngrade(
                message, profile_version=profile.browser_version, browser_version=at_hand
            )
        log.warning("%s (allow_downgrade=True: going ahead)", message)

    def _launch_options(self) -> dict[str, Any]:
        assert self.archetype is not None and self.browser is not None
        launch = self._base_launch_options()
        # launch_options add to what the session built (args, headers: merged), see _merged.
        for key, value in self.options.launch_options.items():
            launch[key] = _merged(launch[key], value) if key in launch else value
        self._log_device()
        return launch

    def _log_device(self) -> None:
        """One INFO line: which of the archetype's device settings the session applied, and
        which the caller overrode (names and plain values only: nothing secret)."""
        assert self.archetype is not None
        arch, opts = self.archetype, self.options
        device: dict[str, Any] = {
            "viewport": arch.viewport.model_dump(),
            "device_scale_factor": arch.device_scale_factor,
            "is_mobile": arch.is_mobile,
            "has_touch": arch.has_touch,
            "user_agent": arch.user_agent,
        }
        overridden = {k for k in device if k in opts.launch_options}
        if opts.viewport:
            overridden.add("viewport")
        if opts.user_agent:
            overridden.add("user_agent")
        applied = []
        for key, value in device.items():
            if key in overridden or value is None:
                continue
            if key == "viewport":
                applied.append(f"viewport={value['width']}x{value['height']}")
            elif key == "user_agent":
                applied.append("user_agent")
            else:
                applied.append(f"{key}={value}")
        log.info(
            "session on %r: archetype %r applied %s; overridden by the caller: %s",
            self.ref,
            arch.name,
            ", ".join(applied) or "nothing",
            ", ".join(sorted(overridden)) or "nothing",
        )

    def _base_launch_options(self) -> dict[str, Any]:
        assert self.archetype is not None and self.browser is not None
        arch, opts = self.archetype, self.options
        launch: dict[str, Any] = {
            **self.browser.launch_options(),
            "headless": opts.headless,
            "viewport": dict(opts.viewport) if opts.viewport else arch.viewport.model_dump(),
            "device_scale_factor": arch.device_scale_factor,
            "has_touch": arch.has_touch,
        }
        if arch.is_mobile:
            launch["is_mobile"] = True
        user_agent = opts.user_agent or arch.user_agent
        if user_agent:
            launch["user_agent"] = user_agent
        for key in ("proxy", "locale", "timezone_id"):
            value = getattr(opts, key)
            if value is not None:
                launch[key] = value
        if opts.args:
            launch["args"] = list(opts.args)
        # Ctrl-C in a terminal (and a SIGTERM or SIGHUP to the process group) reaches
        # Playwright's driver too, which by default closes the browser at once: the session
        # would see it vanish and keep the old state. Leave the signals to this process, whose
        # teardown closes the browser and commits.
        launch.update(handle_sigint=False, handle_sigterm=False, handle_sighup=False)
        return launch

    def _load_session_cookies(self) -> list[dict[str, Any]]:
        assert self.user_data_dir is not None
        path = self.user_data_dir / SESSION_COOKIES_FILE
        if not self.options.keep_session_cookies or not path.is_file():
            return []
        try:
            cookies = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return []
        return [c for c in cookies if isinstance(c, dict)] if isinstance(cookies, list) else []

    def started(self, browser_version: str | None) -> None:
        assert self.profile is not None
        self.browser_version = browser_version
        self.profile = self.store.record_use(
            self.profile.id,
            readonly=self.options.readonly,
            browser_version=browser_version,
            engine=self.profile.browser_name,
            **self.audit,
        )

    # ---------------------------------------------------------------- end

    def save_session_cookies(self, cookies: list[dict[str, Any]]) -> None:
        """Keep the cookies that have no expiry (``expires == -1``) with the state."""
        if self.user_data_dir is None or not self.options.keep_session_cookies:
            return
        session_only = [c for c in cookies if c.get("expires", -1) in (-1, None)]
        path = self.user_data_dir / SESSION_COOKIES_FILE
        if session_only:
            path.write_text(json.dumps(session_only, sort_keys=True), "utf-8")
        else:
            path.unlink(missing_ok=True)

    def should_commit(self, *, failed: bool) -> bool:
        if self.options.readonly or self.options.save == "never":
            return False
        return not (failed and self.options.save == "on_success")

    def finish(
        self,
        *,
        failed: bool,
        crashed: bool,
        error: str | None = None,
        start_failed: bool = False,
        interrupted: str | None = None,
    ) -> None:
        """After the browser has exited: commit (or not), release, record. Always releases;
        re-raises a commit failure (``NotFound`` for a profile deleted meanwhile).

        ``error`` is what the audit log keeps: pass it through
        :func:`profiles.redact.describe_error`. ``start_failed``: the session was recorded as
        started but did not open (its ``start_url`` failed, ...); nothing is committed.
        ``interrupted`` names the signal that ended the block (``"SIGINT"``, ...): a clean
        end, recorded as ``outcome="ok"`` with ``reason="interrupted (SIGINT)"``."""
        if interrupted is not None:
            failed = False
        outcome = "crashed" if crashed else ("error" if failed or start_failed else "ok")
        committed = False
        ended = False  # session.ended recorded (and the lease released) with the commit
        reason: str | None = None
        try:
            if start_failed:
                reason = "the session failed to start; the previous committed state is kept"
                log.info("session on %s: %s (%s)", self.ref, reason, error)
            elif crashed:
                reason = "the browser exited unexpectedly; the previous committed state is kept"
                log.warning("session on %s: %s", self.ref, reason)
            elif self.should_commit(failed=failed):
                assert self.profile is not None and self.user_data_dir is not None
                epoch = self.lock.epoch if self.lock is not None else None
                end = None
                if self.lock is not None and epoch is not None:
                    said = f"interrupted ({interrupted})" if interrupted is not None else None
                    end = self._ended_payload(outcome, committed=True, reason=said, error=error)
                    self.lock.ending()
                try:
                    self.profile = self.store.commit_state(
                        self.profile,
                        self.user_data_dir,
                        browser_version=self.browser_version,
                        event="state.uploaded",
                        epoch=epoch,
                        end_session=end,
                        source="session",
                    )
                    committed = True
                    if end is not None and self.lock is not None:
                        ended = True
                        self.lock.forget()  # released by the commit
                except LeaseLost:
                    reason = (
                        "the writer lease was lost (another writer took the profile after it "
                        "expired); the newer state stands"
                    )
                    raise
                except NotFound as exc:
                    assert self.profile is not None
                    self.store.working_copies.remove(self.profile.id)
                    reason = "the profile was deleted during the session"
                    raise NotFound(
                        f"Profile {self.profile.name!r} ({self.profile.id}) was deleted "
                        "during the session; its state was discarded.",
                        resource="profile",
                        ref=self.profile.id,
                    ) from exc
                except (OSError, ProfileError) as exc:
                    if isinstance(exc, ProfileError) and exc.transient:
                        # The service is down, unreachable or overloaded: keep the work.
                        reason = f"the store's service is unreachable: {_cause(exc)}"
                        raise self._keep_pending(exc) from exc
                    if not isinstance(exc, OSError | StorageUnavailable):
                        raise
                    # a full disk, a lost home, ...
                    cause = exc.cause if isinstance(exc, StorageUnavailable) else str(exc)
                    reason = f"writing the state failed: {cause}"
                    raise StateCommitFailed(
                        f"Could not write the state of profile {self.profile.name!r} back: "
                        f"{cause}. The previous committed state is kept; free space or fix the "
                        f"store home ({self.store.home}) and run the session again.",
                        profile_id=self.profile.id,
                    ) from exc
            else:
                reason = f"save={self.options.save!r}" if not self.options.readonly else "readonly"
            if interrupted is not None and reason is None and not crashed:
                reason = f"interrupted ({interrupted})"
            if not crashed and not start_failed:
                self._refresh_engine_cache()  # still holding the lease or the private copy
        finally:
            self.ended = self._ended_payload(outcome, committed, reason, error)
            try:
                if not ended and self.profile is not None:
                    self._end(self.ended)
            finally:
                self._release()

    def _ended_payload(
        self, outcome: str, committed: bool, reason: str | None, error: str | None
    ) -> dict[str, Any]:
        return {
            "outcome": outcome,
            "committed": committed,
            "reason": reason,
            "error": error,
            "readonly": self.options.readonly,
            "seconds": round(time.monotonic() - self._started_at, 3),
            **self.audit,
        }

    def _end(self, payload: dict[str, Any]) -> None:
        """Release the writer lease and record ``session.ended`` together (one request over
        HTTP); when that fails, :meth:`_release` still releases the lease on its own."""
        assert self.profile is not None
        lock = self.lock
        epoch = lock.epoch if lock is not None else None
        if lock is not None and epoch is not None:
            lock.ending()
        try:
            self.store.end_session(self.profile.id, epoch, **payload)
        except ProfileError as exc:
            log.debug("could not record the end of the session on %s: %s", self.ref, exc)
            return
        if lock is not None and epoch is not None:
            lock.forget()

    def _keep_pending(self, exc: ProfileError) -> StateCommitFailed:
        """The commit could not reach the service: keep the working copy on this machine as
        a pending commit (profiles.workspace.pending) and say so; the error to raise."""
        assert self.profile is not None and self.user_data_dir is not None
        name, cause = self.profile.name, _cause(exc)
        where = str(exc.details.get("home") or self.store.location)
        try:
            kept = self.store.keep_pending(
                self.profile,
                self.user_data_dir,
                base=self._base or state_identity(self.profile),
                epoch=self.lock.epoch if self.lock is not None else None,
                browser_version=self.browser_version,
                reason=f"{where} is unreachable: {cause}",
            )
        except (ProfileError, OSError, ValueError) as keep_exc:
            failed = keep_exc.message if isinstance(keep_exc, ProfileError) else str(keep_exc)
            return StateCommitFailed(
                f"Could not commit the state of profile {name!r}: the store's service at "
                f"{where} is unreachable ({cause}), and keeping the state on this machine "
                f"failed too ({failed}). The previous committed state is kept; the session's "
                f"directory is left in {self.user_data_dir}.",
                profile_id=self.profile.id,
                pending=False,
            )
        return StateCommitFailed(
            f"Could not commit the state of profile {name!r}: the store's service at {where} "
            f"is unreachable ({cause}). The session's state is kept on this machine as a "
            f"pending commit ({kept.parent}); the next session on {name!r} here, or "
            f"'profiles sync {name}', commits it once the service is back. If the profile "
            "is committed elsewhere meanwhile, 'profiles ps' lists it as a conflict for "
            f"'profiles sync {name} --force' or '--discard'.",
            profile_id=self.profile.id,
            pending=True,
            state_dir=str(kept),
        )

    def abort(self) -> None:
        """Start-up failed half-way: nothing is committed, everything is released."""
        self._release()

    def _release(self) -> None:
        if self._reader is not None:
            self._reader.release()
            self._reader = None
        if self._private_dir is not None:
            self._private_dir.release()
            self._private_dir = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
