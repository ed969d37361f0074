"""The public interfaces, pinned: the HTTP service's ``/openapi.json`` and the ``--help`` of
every ``profiles`` command, compared with the copies in ``tests/snapshots/``.

They pin behaviour while code moves: a refactor that changes a route, a schema, an option
or a help text fails here. A change meant to alter them rewrites the copies with
``PROFILES_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_interface_snapshots.py``
and the diff shows up in review.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from profiles.cli.main import build_parser
from profiles.http.server import ServerConfig, create_app

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("PROFILES_UPDATE_SNAPSHOTS") == "1"


def _check(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if UPDATE:
        path.write_text(text, "utf-8")
        return
    assert path.exists(), f"no snapshot {path}: run with PROFILES_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text("utf-8"), (
        f"{name} changed; if that is meant, run with PROFILES_UPDATE_SNAPSHOTS=1 and review"
        " the diff"
    )


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[str, str]:
    """``"profiles open"`` -> its ``--help``, for every command and subcommand."""
    found = {" ".join(("profiles", *prefix)): parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_commands(sub, (*prefix, name)))
    return found


def test_every_help_text_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal's width
    helps = _commands(build_parser())
    assert len(helps) > 20
    text = "".join(f"==== {name}\n{body}\n" for name, body in sorted(helps.items()))
    _check("cli-help.txt", text)


def test_the_openapi_document_is_pinned(tmp_path: Path) -> None:
    document = create_app(ServerConfig(home=tmp_path)).openapi()
    _check("openapi.json", json.dumps(document, indent=1, sort_keys=True) + "\n")
