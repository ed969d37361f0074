"""Rules for what a caller may pass in: names, descriptions, labels, page sizes.

Each check returns the clean value or raises :class:`~profiles.errors.ValidationFailed`
naming the field and what to do.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from profiles.errors import ValidationFailed

__all__ = [
    "BROWSER_VERSION",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_LABELS",
    "MAX_LABEL_KEY_LENGTH",
    "MAX_LABEL_VALUE_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_PAGE_SIZE",
    "check_browser_version",
    "check_description",
    "check_labels",
    "check_limit",
    "check_name",
]

MAX_NAME_LENGTH = 64
MAX_DESCRIPTION_LENGTH = 2048
MAX_LABELS = 32
MAX_LABEL_KEY_LENGTH = 64
MAX_LABEL_VALUE_LENGTH = 256
MAX_PAGE_SIZE = 100


def _bad_char(value: str) -> str | None:
    """The first whitespace, control, format, separator or surrogate character, if any."""
    for ch in value:
        if ch.isspace() or unicodedata.category(ch) in {
            "Cc",
            "Cf",
            "Cs",
            "Co",
            "Cn",
            "Zs",
            "Zl",
            "Zp",
        }:
            return ch
    return None


def check_name(name: object, *, field: str = "name") -> str:
    """A profile name: 1 to 64 characters, no whitespace or control characters."""
    if not isinstance(name, str):
        raise ValidationFailed(f"Profile {field} must be a string.", field=field)
    if not name:
        raise ValidationFailed(f"Profile {field} is required and cannot be empty.", field=field)
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationFailed(
            f"Profile {field} is {len(name)} characters long; the maximum is {MAX_NAME_LENGTH}.",
            field=field,
        )
    if _ID.fullmatch(name):
        raise ValidationFailed(
            f"Profile {field} {name!r} looks like an id (prof_..., psnap_..., evt_...); a "
            "name that could be mistaken for another record's id is not allowed. Choose "
            "another name.",
            field=field,
        )
    bad = _bad_char(name)
    if bad is not None:
        raise ValidationFailed(
            f"Profile {field} {name!r} contains {unicodedata.name(bad, f'U+{ord(bad):04X}')} "
            f"(U+{ord(bad):04X}); names cannot contain whitespace or control characters. "
            "Use lowercase letters, digits and hyphens, e.g. 'production-eu'.",
            field=field,
        )
    return name


def check_description(description: object) -> str | None:
    """A free-form description of at most 2048 characters, or ``None``."""
    if description is None:
        return None
    if not isinstance(description, str):
        raise ValidationFailed("Description must be a string or null.", field="description")
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise ValidationFailed(
            f"Description is {len(description)} characters long; "
            f"the maximum is {MAX_DESCRIPTION_LENGTH}.",
            field="description",
        )
    return description


def check_labels(labels: object) -> dict[str, str]:
    """A small str-to-str map: at most 32 entries, keys up to 64 characters (non-empty,
    no whitespace or control characters), values up to 256 characters."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise ValidationFailed("Labels must be a mapping of strings to strings.", field="labels")
    if len(labels) > MAX_LABELS:
        raise ValidationFailed(
            f"{len(labels)} labels given; at most {MAX_LABELS} are allowed.", field="labels"
        )
    clean: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValidationFailed(
                f"Label {key!r}: keys and values must both be strings.", field="labels"
            )
        if not key or len(key) > MAX_LABEL_KEY_LENGTH or _bad_char(key) is not None:
            raise ValidationFailed(
                f"Label key {key!r} is invalid: use 1 to {MAX_LABEL_KEY_LENGTH} characters "
                "without whitespace or control characters.",
                field="labels",
            )
        if len(value) > MAX_LABEL_VALUE_LENGTH or any(
            unicodedata.category(ch) == "Cc" for ch in value
        ):
            raise ValidationFailed(
                f"Label {key!r}: values are at most {MAX_LABEL_VALUE_LENGTH} characters "
                "without control characters.",
                field="labels",
            )
        clean[key] = value
    return dict(sorted(clean.items()))


def check_limit(limit: object) -> int:
    """A page size from 1 to 100."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationFailed(
            f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}; got {limit!r}.",
            field="limit",
        )
    return limit


#: A browser version as Chromium's "Last Version" and Firefox's compatibility.ini write it.
BROWSER_VERSION = re.compile(r"[0-9]{1,5}(?:\.[0-9]{1,6}){0,4}(?:[ab][0-9]{1,4}|esr)?", re.ASCII)
_ID = re.compile(r"(prof|psnap|evt)_[0-9A-Fa-f-]+")


def check_browser_version(version: object, *, field: str = "browser_version") -> str:
    """A browser version: digits and dots, an optional short suffix (``153.7.0esr``)."""
    if not isinstance(version, str) or not BROWSER_VERSION.fullmatch(version):
        shown = repr(version)[:40] if isinstance(version, str) else type(version).__name__
        raise ValidationFailed(
            f"{field} must look like a browser version such as 156.0.8078.73 or 153.7.0, "
            f"not {shown}.",
            field=field,
        )
    return version
