"""ProfileStore offers the service's record operations by typed delegation: the signatures
and docstrings are the protocol's, and mypy checks calls against them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from profiles import ProfileStore
from profiles.service.delegation import Delegated
from profiles.service.protocol import ProfileService


def test_every_delegated_operation_is_the_protocols_own() -> None:
    delegated = {n: v for n, v in vars(ProfileStore).items() if isinstance(v, Delegated)}
    assert len(delegated) >= 12
    for name, descriptor in delegated.items():
        method = getattr(ProfileService, name)
        assert descriptor.__wrapped__ is method, name
        assert descriptor.__doc__ and descriptor.__doc__ == method.__doc__, name


def test_calls_through_the_store_reach_the_service(tmp_path: Path) -> None:
    with ProfileStore(tmp_path / "home") as store:
        created = store.create("delegated", labels={"team": "a"})
        assert store.update("delegated", add_labels={"b": "c"}).labels == {"team": "a", "b": "c"}
        assert store.clone("delegated").name == "delegated-copy"
        snap = store.snapshot("delegated", label="v1")
        assert store.get_snapshot(snap.id).label == "v1"
        assert [e.type for e in store.audit(profile=created.id).data][-1] == "profile.created"


def test_mypy_checks_delegated_calls_against_the_protocol(tmp_path: Path) -> None:
    snippet = tmp_path / "calls.py"
    snippet.write_text(
        "from profiles import ProfileStore\n"
        "store = ProfileStore('/nonexistent')\n"
        "store.create(123)\n"
        "store.update('a', nme='b')\n"
        "reveal_type(store.clone)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    out = done.stdout
    assert 'Argument 1 has incompatible type "int"; expected "str"' in out, out
    assert 'Unexpected keyword argument "nme"' in out, out
    assert "def (ref: str, *, name: str | None =, with_state: bool =" in out, out
