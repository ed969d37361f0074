"""Every error class survives the HTTP service: raised in the server's app, sent as its
``{"error": {...}}`` body by the app's own handlers over a real uvicorn server on
loopback, read back by the client as the same class with the same code, status, message,
details and attributes.

The classes come from the registry in :mod:`profiles.errors` and from walking
``ProfileError``'s subclasses, never from a hand-written list: a class added later is
checked too, and one left out of the registry fails here.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from support.waiting import wait_until

import profiles
import profiles.errors
from profiles.errors import ProfileError, RateLimited, error_class, error_classes, rebuild_error
from profiles.http.client import HttpService
from profiles.http.server import ServerConfig, create_app


def _all_subclasses(cls: type[ProfileError]) -> set[type[ProfileError]]:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= _all_subclasses(sub)
    return found


def _sample(cls: type[ProfileError]) -> ProfileError:
    """An instance with every attribute of its class set, and a detail of no attribute."""
    details: dict[str, Any] = {name: f"{name}-of-{cls.code}" for name in cls.attributes}
    details["extra"] = {"nested": [1, 2]}
    message = f"{cls.code}: what happened, and what to do next."
    if issubclass(cls, RateLimited):  # as the service sends it: the wait, in words too
        details["retry_after"] = 7
        message += " Retry after 7 s."
    return rebuild_error(cls, message, details)


def test_every_error_class_is_registered_by_a_code_of_its_own() -> None:
    classes = _all_subclasses(ProfileError)
    exported = {
        getattr(profiles.errors, name)
        for name in profiles.errors.__all__
        if isinstance(getattr(profiles.errors, name), type)
    }
    assert exported <= classes
    assert set(error_classes()) == classes
    assert len({cls.code for cls in classes}) == len(classes)
    for cls in classes:
        assert error_class(cls.code) is cls
        assert getattr(profiles, cls.__name__) is cls, f"{cls.__name__} is not in profiles"


def test_a_class_must_name_a_code_of_its_own() -> None:
    with pytest.raises(TypeError, match="must name its own code"):
        type("NoCode", (ProfileError,), {})
    with pytest.raises(TypeError, match="is taken by"):
        type("Twin", (ProfileError,), {"code": "NotFound"})


@pytest.fixture(scope="module")
def raising_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service's real app, plus one route that raises the sample of a code, served by
    uvicorn on a free loopback port: its base URL (``.../v1``)."""
    home: Path = tmp_path_factory.mktemp("server")
    app = create_app(ServerConfig(home=home, rate_limit=None))

    @app.get("/v1/test-raise/{code}")
    def raise_sample(code: str) -> None:
        cls = error_class(code)
        assert cls is not None
        raise _sample(cls)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), timeout=30)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.parametrize(
    "cls", sorted(_all_subclasses(ProfileError), key=lambda c: c.code), ids=lambda c: c.code
)
def test_every_error_class_survives_the_service(
    raising_server: str, cls: type[ProfileError]
) -> None:
    sample = _sample(cls)
    service = HttpService(raising_server, attempts=1, max_retry_after=0)
    try:
        with pytest.raises(ProfileError) as caught:
            service._json("GET", f"test-raise/{cls.code}", idempotent=False)
    finally:
        service.close()
    back = caught.value
    assert type(back) is cls
    assert (back.code, back.status, back.message) == (sample.code, sample.status, sample.message)
    assert back.details == sample.details
    for name in cls.attributes:
        assert getattr(back, name) == getattr(sample, name), name


def test_the_client_imports_no_server_framework() -> None:
    """A machine that only talks to a service does not load the server's stack."""
    import subprocess
    import sys

    code = (
        "import sys; import profiles.http.client, profiles; "
        "from profiles import ProfileStore; "
        "bad = sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'profiles.http.server') "
        "if m in sys.modules); print(bad)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
