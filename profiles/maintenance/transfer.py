"""Move a whole store to another backend: profiles, snapshots, audit log and state bytes.

``transfer(source, target)`` copies everything the source holds into the target, keeping ids,
names, timestamps and checksums, in the order that keeps the target consistent at every
moment: state bytes first (each verified against its SHA-256 while it is stored), then the
profile and snapshot records that point at them, then the audit log. Anything already in the
target (same id; same checksum for bytes) is skipped, so an interrupted transfer is resumed
by running it again. Embedded to PostgreSQL + S3 and back work the same way.

The source should be quiet while it is copied (no sessions writing): a state committed on
the source after its record was copied is not carried over (run the transfer again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from profiles.errors import Conflict, ProfileError
from profiles.store import ProfileStore

__all__ = ["TransferReport", "transfer"]

log = logging.getLogger(__name__)


@dataclass
class TransferReport:
    """What :func:`transfer` did (counts of copied and already-present items)."""

    blobs_copied: int = 0
    blobs_present: int = 0
    bytes_copied: int = 0
    profiles_copied: int = 0
    profiles_present: int = 0
    snapshots_copied: int = 0
    snapshots_present: int = 0
    events_copied: int = 0
    events_present: int = 0
    conflicts: list[str] = field(default_factory=list)


Progress = Callable[[str], None]


def transfer(
    source: ProfileStore, target: ProfileStore, *, progress: Progress | None = None
) -> TransferReport:
    """Copy ``source`` into ``target`` (see the module docstring); resumable, verified."""
    if source.location == target.location:
        raise ProfileError(
            f"The source and the target are the same store ({source.location}); nothing to do."
        )
    report = TransferReport()
    say = progress or (lambda _msg: None)
    with source.catalog.transaction(write=False) as tx:
        states = sorted(tx.checksums_in_use())
    # A chunked state's manifest comes after its chunks, so the target never holds a
    # manifest whose chunks are not there yet.
    checksums: list[str] = []
    service = source.service
    for checksum in states:
        manifest = service.manifest(checksum)
        if manifest is not None:
            checksums += sorted(manifest.blob_checksums())
        checksums.append(checksum)
    checksums = list(dict.fromkeys(checksums))
    # 1. Data first: every referenced blob, verified by its name as it is stored.
    for n, checksum in enumerate(checksums, 1):
        if target.blobs.exists(checksum):
            report.blobs_present += 1
            continue
        size = _blob_size(source, checksum)
        with source.blobs.open(checksum) as stream:
            target.blobs.put(checksum, stream, size=size)
        report.blobs_copied += 1
        report.bytes_copied += size
        say(f"state {n}/{len(checksums)}: {checksum[:12]} ({size} bytes)")
    # 2. Then the records that point at them.
    for profile in source.iter_profiles():
        with target.catalog.transaction() as tx:
            if tx.get_profile(profile.id) is not None:
                report.profiles_present += 1
                continue
            clash = tx.get_profile_by_name(profile.name)
            if clash is not None:
                report.conflicts.append(
                    f"profile {profile.name!r} ({profile.id}): the target has another "
                    f"profile of that name ({clash.id})"
                )
                continue
            try:
                tx.insert_profile(profile.model_copy(update={"status": _status(profile)}))
            except Conflict as exc:
                report.conflicts.append(f"profile {profile.name!r} ({profile.id}): {exc}")
                continue
        report.profiles_copied += 1
        say(f"profile {profile.name}")
    cursor: str | None = None
    while True:
        page = source.snapshots(limit=100, cursor=cursor)
        with target.catalog.transaction() as tx:
            for snap in page.data:
                if tx.get_snapshot(snap.id) is not None:
                    report.snapshots_present += 1
                    continue
                parent = snap.parent_profile_id
                if parent is not None and tx.get_profile(parent) is None:
                    snap = snap.model_copy(update={"parent_profile_id": None})
                tx.insert_snapshot(snap)
                report.snapshots_copied += 1
        if not page.has_more:
            break
        cursor = page.next_cursor
    # 3. The audit log last (ids already there are skipped).
    present = _event_ids(target)
    cursor = None
    while True:
        events = source.audit(limit=100, cursor=cursor)
        with target.catalog.transaction() as tx:
            for event in events.data:
                if event.id in present:
                    report.events_present += 1
                    continue
                tx.insert_event(event)
                report.events_copied += 1
        if not events.has_more:
            break
        cursor = events.next_cursor
    log.info(
        "transferred %s to %s: %d blobs (%d bytes), %d profiles, %d snapshots, %d events",
        source.location,
        target.location,
        report.blobs_copied,
        report.bytes_copied,
        report.profiles_copied,
        report.snapshots_copied,
        report.events_copied,
    )
    return report


def _status(profile: object) -> str:
    checksum = getattr(profile, "checksum", None)
    return "ready" if checksum else "empty"


def _blob_size(store: ProfileStore, checksum: str) -> int:
    info = store.blobs.stat(checksum)
    if info is None:
        raise ProfileError(
            f"State blob {checksum} is referenced but missing from {store.location}; "
            "nothing more was copied. Restore it there, or delete what references it."
        )
    return info.size


def _event_ids(store: ProfileStore) -> set[str]:
    ids: set[str] = set()
    cursor: str | None = None
    while True:
        page = store.audit(limit=100, cursor=cursor)
        ids.update(e.id for e in page.data)
        if not page.has_more:
            return ids
        cursor = page.next_cursor
