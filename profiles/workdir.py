"""Unpacked working copies of profiles, kept between sessions to make warm starts cheap.

``<home>/work/<profile_id>/`` is the browser's user-data-dir. A marker file beside it,
``<profile_id>.clean``, holds the checksum of the committed archive the directory is
identical to. The marker is removed before a browser is let loose on the directory and
written again only after the directory has been committed, so a crash in between leaves
no marker and the next session unpacks the committed archive instead of trusting a
half-flushed directory. Only the holder of the profile's writer lock touches these.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from profiles.fsutil import atomic_write_bytes, fsync_dir, remove_tree

__all__ = ["EMPTY_STATE", "WorkingCopies"]

EMPTY_STATE = "empty"  # marker content for a profile that has no committed state yet


class WorkingCopies:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, profile_id: str) -> Path:
        return self.root / profile_id

    def _marker(self, profile_id: str) -> Path:
        return self.root / f"{profile_id}.clean"

    def clean_state(self, profile_id: str) -> str | None:
        """The checksum (or ``EMPTY_STATE``) the working copy is known to match, if any."""
        if not self.path(profile_id).is_dir():
            return None
        try:
            return self._marker(profile_id).read_text("ascii").strip() or None
        except OSError:
            return None

    def mark_clean(self, profile_id: str, state: str) -> None:
        atomic_write_bytes(self._marker(profile_id), state.encode("ascii"))

    def mark_dirty(self, profile_id: str) -> None:
        marker = self._marker(profile_id)
        if marker.exists():
            marker.unlink()
            fsync_dir(self.root)

    def remove(self, profile_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._marker(profile_id).unlink()
        remove_tree(self.path(profile_id))
