"""Redaction of text that is logged or stored: no secrets in the audit log or in logs.

Error messages from Playwright and browsers quote URLs whole (``page.goto: net::ERR_... at
https://user:pw@host/cb?code=...&token=...``), and cookie values can appear in them too. What
is recorded keeps the error's type and shape, and loses query strings, fragments, userinfo
and anything that looks like a cookie or token value.
"""

from __future__ import annotations

import re

__all__ = ["MAX_ERROR_TEXT", "describe_error", "redact_text", "redact_url"]

MAX_ERROR_TEXT = 500

# Both patterns run in time linear in the text (a client's audit text reaches them): no
# unbounded run is scanned again from each of its positions.
# scheme://[userinfo@]host[:port][/path][?query][#fragment], up to whitespace or a quote. A
# scheme is at most 32 characters: a longer run before "://" is matched from where the last
# 32 start (the text before is kept as it is either way).
_URL = re.compile(r"""(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]{0,31}://)(?P<rest>[^\s'"<>]+)""")
# name=value pairs that carry secrets when they appear outside a URL too: a name (a run of
# word characters, dots and dashes, tried once from where the run starts) that holds one of
# the words, then ``=`` or ``:``, then the value.
_SECRET_PAIR = re.compile(
    r"""(?i)(?<![\w.\-])(?=[\w.\-]*?(?:token|secret|password|passwd|pwd|session|sid|auth|key|"""
    r"""code|cookie|signature|sig|credential))(?P<key>[\w.\-]++)(?P<sep>\s*+[=:]\s*+)"""
    r"""(?P<value>"[^"]*+"|'[^']*+'|[^\s&;,'"]++)"""
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def redact_url(url: str) -> str:
    """``url`` without its userinfo, query string and fragment (``?…`` marks a removed query)."""
    match = _URL.match(url)
    if match is None:
        return _SECRET_PAIR.sub(_hide_pair, url.split("?", 1)[0].split("#", 1)[0])
    rest = match.group("rest")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "…@" + authority.rsplit("@", 1)[1]
    cut = min((i for i in (path.find("?"), path.find("#")) if i >= 0), default=-1)
    if not slash:
        cut_auth = min(
            (i for i in (authority.find("?"), authority.find("#")) if i >= 0), default=-1
        )
        if cut_auth >= 0:
            return f"{match.group('scheme')}{authority[:cut_auth]}?…"
        return f"{match.group('scheme')}{authority}"
    if cut >= 0:
        return f"{match.group('scheme')}{authority}/{path[:cut]}?…"
    return f"{match.group('scheme')}{authority}/{path}"


def _first_of(text: str, chars: str) -> int:
    found = [i for i in (text.find(c) for c in chars) if i >= 0]
    return min(found) if found else -1


def _hide_pair(match: re.Match[str]) -> str:
    return f"{match.group('key')}{match.group('sep')}…"


def redact_text(text: str, *, limit: int = MAX_ERROR_TEXT) -> str:
    """``text`` with every URL reduced by :func:`redact_url`, secret-looking ``name=value``
    pairs hidden, control characters escaped, and at most ``limit`` characters."""
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    text = _SECRET_PAIR.sub(_hide_pair, text)
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def describe_error(exc: BaseException) -> str:
    """``"<Type>: <redacted first line of the message>"``: what the audit log keeps."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {redact_text(first)}" if first else name
