"""What a client may ask of a remote session's browser over CDP.

The browser runs on the service's machine, as the service's user: CDP as it is would let an
account's client reach past its own profile. A client could read the service's files (a
page navigated to ``file:///...``, a file input filled with ``DOM.setFileInputFiles`` and
read by the page's script), write files where it likes (``Browser.setDownloadBehavior``
with any ``downloadPath``), open ports (``Tethering.bind``), load extensions, or hand CDP to
the page's own script (``Target.exposeDevToolsProtocol``, which would bypass this guard).
Every message a client sends is checked here before it reaches the browser:

* refused, with a CDP error answer to its ``id`` (the connection goes on): the methods and
  domains in :data:`REFUSED_METHODS` and :data:`REFUSED_DOMAINS`, and a navigation, a new
  target or a network load whose URL is not ``http(s)``, ``about:``, ``data:`` or ``blob:``
  (no ``file:``, ``chrome:``, ``devtools:``, ``view-source:``);
* rewritten: a download behaviour that allows downloads keeps them in the session's own
  private directory on the service, whatever path the client named (Playwright's
  ``connect_over_cdp`` names one of its own machine's);
* the connection closed (1008): a message that is not a JSON object with an integer ``id``
  and a string ``method`` (CDP's shape), or a binary one.

What the browser itself reaches (the network of the service's machine) is not guarded
here: run the service where its browsers may go, or give it a proxy (docs/http-api.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = ["Refused", "Verdict", "check_client_message"]

#: Methods no client may call.
REFUSED_METHODS: Final = frozenset(
    {
        "DOM.setFileInputFiles",  # names files on the service's disk
        "Target.exposeDevToolsProtocol",  # CDP for the page's script: around this guard
        "Browser.executeBrowserCommand",
        "Page.setDownloadBehavior",  # deprecated twin of Browser's: use that one
    }
)
#: Domains no client may use.
REFUSED_DOMAINS: Final = frozenset({"Tethering", "Extensions", "PWA", "SystemInfo"})
#: URL schemes a client may send the browser to.
ALLOWED_SCHEMES: Final = frozenset({"http", "https", "about", "data", "blob"})
#: The methods whose ``url`` parameter is checked against :data:`ALLOWED_SCHEMES`.
URL_METHODS: Final = frozenset(
    {"Page.navigate", "Target.createTarget", "Network.loadNetworkResource"}
)


class Refused(Exception):
    """A message that is not CDP: the connection is closed."""


@dataclass(frozen=True)
class Verdict:
    """``forward``: the text to send the browser (the client's, or rewritten); else
    ``answer``: the error answer to send the client instead."""

    forward: str | None = None
    answer: str | None = None


def _error(message: dict[str, Any], why: str) -> str:
    answer: dict[str, Any] = {
        "id": message["id"],
        "error": {"code": -32000, "message": f"Refused by the profile service: {why}"},
    }
    if isinstance(message.get("sessionId"), str):
        answer["sessionId"] = message["sessionId"]
    return json.dumps(answer)


def check_client_message(text: str, downloads: Callable[[], Path]) -> Verdict:
    """The verdict on one text message from a client; ``downloads`` gives the session's
    private download directory (made on first use). ``Refused`` for a message that is not
    CDP."""
    try:
        message = json.loads(text)
    except ValueError:
        raise Refused("not JSON") from None
    if not isinstance(message, dict):
        raise Refused("not a JSON object")
    method, ident = message.get("method"), message.get("id")
    if not isinstance(method, str) or not isinstance(ident, int) or isinstance(ident, bool):
        raise Refused("not a CDP command (an integer id and a method)")
    params = message.get("params")
    if params is not None and not isinstance(params, dict):
        raise Refused("params is not an object")
    domain = method.partition(".")[0]
    if method in REFUSED_METHODS or domain in REFUSED_DOMAINS:
        return Verdict(answer=_error(message, f"{method} is not available on this service."))
    if method in URL_METHODS:
        url = (params or {}).get("url")
        if isinstance(url, str):
            scheme = urlsplit(url.strip()).scheme.lower()
            if scheme not in ALLOWED_SCHEMES:
                return Verdict(
                    answer=_error(
                        message,
                        f"{method} to a {scheme or 'relative'}: URL; only http(s), about:, "
                        "data: and blob: URLs are allowed.",
                    )
                )
    allows = params is not None and params.get("behavior") in ("allow", "allowAndName")
    if method == "Browser.setDownloadBehavior" and params is not None and allows:
        message["params"] = {**params, "downloadPath": str(downloads())}
        return Verdict(forward=json.dumps(message))
    return Verdict(forward=text)
