"""What a session does around the browser, shared by :class:`Session` and :class:`AsyncSession`.

No Playwright call lives here, so the sync and async front ends stay thin::

    prepare()  resolve or create the profile, find a browser, refuse a downgrade,
               take the writer lock, materialise the working directory, build launch options
    started()  record the use (usage_count, last_used_at, session.created)
    finish()   commit the closed browser's directory (or not), release the lock,
               record session.ended; clean up a read-only private copy
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from driver.browsers import BrowserInstall, find_browser, major_version, probe_version
from profiles.archetypes import Archetype, get_archetype
from profiles.archive import remove_engine_locks
from profiles.errors import (
    BrowserDowngrade,
    Conflict,
    NotFound,
    ProfileError,
    StateCommitFailed,
    ValidationFailed,
)
from profiles.locks import ProfileLock
from profiles.models import Profile
from profiles.store import ProfileStore

__all__ = ["SESSION_COOKIES_FILE", "LaunchPlan", "SaveMode", "SessionLifecycle", "SessionOptions"]

log = logging.getLogger(__name__)

SaveMode = Literal["always", "on_success", "never"]
# Chromium and Firefox drop cookies without an expiry on restart (Playwright issue 36139);
# the session keeps them in this file inside the profile's state and adds them back.
SESSION_COOKIES_FILE = "playwright-profiles-session-cookies.json"


class SessionOptions(BaseModel):
    """What a caller may set on a session; validated once, at construction."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    headless: bool = True
    readonly: bool = False
    lock_timeout: float = Field(default=600.0, ge=0)
    start_url: str | None = None
    viewport: dict[str, int] | None = None
    proxy: dict[str, str] | None = None
    locale: str | None = None
    timezone_id: str | None = None
    user_agent: str | None = None
    args: tuple[str, ...] = ()
    create: bool = True
    archetype: str | None = None
    save: SaveMode = "always"
    allow_downgrade: bool = False
    keep_session_cookies: bool = True
    commit_on_browser_close: bool = False
    launch_options: dict[str, Any] = Field(default_factory=dict)


@dataclass
class LaunchPlan:
    """Everything needed to call ``launch_persistent_context``."""

    engine: str
    user_data_dir: Path
    options: dict[str, Any]
    session_cookies: list[dict[str, Any]] = field(default_factory=list)


class SessionLifecycle:
    """The state machine of one session, minus the browser calls."""

    def __init__(self, profile: str, store: ProfileStore, options: SessionOptions) -> None:
        if not isinstance(profile, str) or not profile:
            raise ValidationFailed("profile must be a profile id or name.", field="profile")
        self.ref = profile
        self.store = store
        self.options = options
        self.profile: Profile | None = None
        self.browser: BrowserInstall | None = None
        self.archetype: Archetype | None = None
        self.lock: ProfileLock | None = None
        self.user_data_dir: Path | None = None
        self._private_dir: Path | None = None
        self._started_at = 0.0
        self.browser_version: str | None = None

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
            if not self.options.create:
                raise
            try:
                return self.store.create(self.ref, archetype=self.options.archetype)
            except Conflict:
                profile = self.store.get(self.ref)  # created by someone else meanwhile
        wanted = self.options.archetype
        if wanted is not None and wanted != profile.archetype:
            raise ValidationFailed(
                f"Profile {profile.name!r} is pinned to {profile.archetype!r}; archetype="
                f"{wanted!r} only applies to a profile the session creates. Clone it with "
                "the new archetype to repin.",
                field="archetype",
            )
        return profile

    def _prepare(self) -> LaunchPlan:
        profile = self._resolve_profile()
        self.archetype = get_archetype(profile.archetype)
        self.browser = find_browser(profile.browser_name)
        at_hand = probe_version(self.browser, self.store.home / "browser-versions.json")
        self._check_downgrade(profile, at_hand)  # fail before waiting for the lock...
        self._started_at = time.monotonic()
        if self.options.readonly:
            parent = Path(tempfile.mkdtemp(dir=self.store.tmp_dir, prefix="readonly-"))
            self._private_dir = parent
            self.profile = self.store.private_copy(profile.id, parent / "state")
            self.user_data_dir = parent / "state"
        else:
            self.lock = self.store.lock(profile, timeout=self.options.lock_timeout)
            self.lock.acquire()
            self.profile, self.user_data_dir = self.store.checkout(profile.id, lock=self.lock)
        self._check_downgrade(self.profile, at_hand)  # ...and again on what was committed since
        removed = remove_engine_locks(self.user_data_dir, profile.browser_name)
        if removed:
            log.info("removed stale engine locks from %s: %s", profile.name, removed)
        return LaunchPlan(
            engine=profile.browser_name,
            user_data_dir=self.user_data_dir,
            options=self._launch_options(),
            session_cookies=self._load_session_cookies(),
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
        launch.update(opts.launch_options)
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

    def finish(self, *, failed: bool, crashed: bool, error: str | None = None) -> None:
        """After the browser has exited: commit (or not), release, record. Always releases;
        re-raises a commit failure (``NotFound`` for a profile deleted meanwhile)."""
        outcome = "crashed" if crashed else ("error" if failed else "ok")
        committed = False
        reason: str | None = None
        try:
            if crashed:
                reason = "the browser exited unexpectedly; the previous committed state is kept"
                log.warning("session on %s: %s", self.ref, reason)
            elif self.should_commit(failed=failed):
                assert self.profile is not None and self.user_data_dir is not None
                try:
                    self.profile = self.store.commit_state(
                        self.profile.id,
                        self.user_data_dir,
                        browser_version=self.browser_version,
                        event="state.uploaded",
                        source="session",
                    )
                    committed = True
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
                except OSError as exc:  # the disk is full, the home went away, ...
                    reason = f"writing the state failed: {exc}"
                    raise StateCommitFailed(
                        f"Could not write the state of profile {self.profile.name!r} back: "
                        f"{exc}. The previous committed state is kept; free space or fix the "
                        f"store home ({self.store.home}) and run the session again.",
                        profile_id=self.profile.id,
                    ) from exc
            else:
                reason = f"save={self.options.save!r}" if not self.options.readonly else "readonly"
        finally:
            self._release()
            if self.profile is not None:
                with contextlib.suppress(ProfileError):
                    self.store.record_event(
                        "session.ended",
                        self.profile.id,
                        outcome=outcome,
                        committed=committed,
                        reason=reason,
                        error=error,
                        readonly=self.options.readonly,
                        seconds=round(time.monotonic() - self._started_at, 3),
                    )

    def abort(self) -> None:
        """Start-up failed half-way: nothing is committed, everything is released."""
        self._release()

    def _release(self) -> None:
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
