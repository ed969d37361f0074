"""For the tests of hostile archives: a directory an unpack must leave as it was, and a
stream whose size cannot be known in advance."""

from __future__ import annotations

import io
from pathlib import Path


def make_target_area(root: Path) -> tuple[Path, Path]:
    """An existing profile directory to replace (``root/area/profile``), next to a sentinel
    that must stay as it is: ``(area, target)``."""
    area = root / "area"
    target = area / "profile"
    (target / "Default").mkdir(parents=True)
    (target / "Local State").write_text('{"before": true}')
    (area / "sentinel.txt").write_text("untouched")
    return area, target


def assert_untouched(area: Path, target: Path) -> None:
    """The area of :func:`make_target_area` is as it was made."""
    assert sorted(p.name for p in area.iterdir()) == ["profile", "sentinel.txt"]
    assert (area / "sentinel.txt").read_text() == "untouched"
    assert (target / "Local State").read_text() == '{"before": true}'
    assert sorted(p.name for p in target.iterdir()) == ["Default", "Local State"]
    assert list((target / "Default").iterdir()) == []


class Unsized(io.RawIOBase):
    """``data`` as a stream that can only be read: no size, no seeking (a socket, a pipe)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)
