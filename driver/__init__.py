"""The session manager: Playwright persistent contexts on named profiles.

>>> from driver import Session
>>> with Session(profile="production") as page:
...     page.goto("https://example.com")
"""

from driver.browsers import BrowserInstall, find_browser
from driver.remote import AsyncRemoteSession, RemoteSession
from driver.session import AsyncSession, Session
from profiles.errors import BrowserDowngrade, BrowserNotFound, ProfileBusy, ProfileError

__all__ = [
    "AsyncRemoteSession",
    "AsyncSession",
    "BrowserDowngrade",
    "BrowserInstall",
    "BrowserNotFound",
    "ProfileBusy",
    "ProfileError",
    "RemoteSession",
    "Session",
    "find_browser",
]
