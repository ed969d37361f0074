"""The ``profiles`` command: every command, JSON output, exit codes, and the README."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from profiles import ProfileStore
from profiles.cli import build_parser, main

from conftest import require_engine

README = Path(__file__).resolve().parent.parent / "README.md"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_profile_commands_and_json_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    created = run_json(
        capsys, "create", "prod", "--description", "main", "--label", "team=qa", "--label", "a=b"
    )
    assert isinstance(created, dict)
    assert created["name"] == "prod" and created["labels"] == {"a": "b", "team": "qa"}
    assert created["created_at"].endswith("Z")

    code, out, _ = run(capsys, "list")
    assert code == 0 and "prod" in out and "desktop-chromium" in out

    listing = run_json(capsys, "list", "--limit", "1")
    assert isinstance(listing, dict)
    assert set(listing) == {"data", "has_more", "next_cursor"}
    # --json works before the command as well as after it
    assert json.loads(run(capsys, "--json", "show", "prod")[1])["id"] == created["id"]

    updated = run_json(capsys, "update", "prod", "--name", "prod-eu", "--clear-description")
    assert isinstance(updated, dict)
    assert updated["name"] == "prod-eu" and updated["description"] is None
    relabelled = run_json(capsys, "update", "prod-eu", "--label", "team=data")
    assert isinstance(relabelled, dict)
    assert relabelled["labels"] == {"a": "b", "team": "data"}
    assert run_json(capsys, "update", "prod-eu", "--clear-labels")["labels"] == {}  # type: ignore[index]

    clone = run_json(capsys, "clone", "prod-eu")
    assert isinstance(clone, dict) and clone["name"] == "prod-eu-copy"

    code, out, _ = run(capsys, "delete", "prod-eu-copy", "--yes")
    assert code == 0 and "deleted prod-eu-copy" in out
    assert [p["name"] for p in run_json(capsys, "list", "--all")["data"]] == ["prod-eu"]  # type: ignore[index]


def test_snapshot_commands(capsys: pytest.CaptureFixture[str]) -> None:
    run_json(capsys, "create", "base", "--description", "kept")
    snap = run_json(capsys, "snapshot", "create", "base", "--label", "v1")
    assert isinstance(snap, dict) and snap["id"].startswith("psnap_")
    assert run_json(capsys, "snapshot", "show", snap["id"])["label"] == "v1"  # type: ignore[index]
    every = run_json(capsys, "snapshot", "list")
    one = run_json(capsys, "snapshot", "list", "base")
    assert every == one
    restored = run_json(capsys, "snapshot", "restore", snap["id"])
    assert isinstance(restored, dict) and restored["name"] == "base-restored"
    code, out, _ = run(capsys, "snapshot", "delete", snap["id"])
    assert code == 0 and snap["id"] in out
    assert run(capsys, "snapshot", "show", snap["id"])[0] == 3


def test_audit_and_archetypes(capsys: pytest.CaptureFixture[str]) -> None:
    run_json(capsys, "create", "one")
    run_json(capsys, "create", "two")
    events = run_json(capsys, "audit", "--profile", "one")
    assert isinstance(events, dict)
    assert [e["type"] for e in events["data"]] == ["profile.created"]
    assert len(run_json(capsys, "audit")["data"]) == 2  # type: ignore[index]

    firefox = run_json(capsys, "archetypes", "--engine", "firefox")
    assert isinstance(firefox, list)
    assert {a["name"] for a in firefox} == {"desktop-firefox", "desktop-firefox-hidpi"}
    code, out, _ = run(capsys, "archetypes")
    assert code == 0 and "iphone-15-pro" in out and "pixel-7" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["create", "bad name"], 2, "whitespace"),
        (["create", "x" * 65], 2, "65 characters"),
        (["create", "ok", "--archetype", "iphone-15-por"], 2, "iphone-15-pro"),
        (["create", "ok", "--label", "novalue"], 2, "KEY=VALUE"),
        (["show", "missing"], 3, "not found"),
        (["create", "taken"], 4, "already exists"),
        (["--max-profiles", "1", "create", "more"], 5, "at most 1"),
        (["update", "taken", "--archetype", "pixel-7"], 2, "clone"),
        (["export", "taken", "out.tar.gz"], 2, "no data to download"),
        (["delete", "taken"], 2, "--yes"),
        (["list", "--limit", "101"], 2, "1 to 100"),
    ],
)
def test_errors_map_to_exit_codes(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    code: int,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))  # noqa: SIM115 - not a terminal
    assert main(["create", "taken"]) == 0
    capsys.readouterr()
    got, out, err = run(capsys, *argv)
    sys.stdin.close()
    assert got == code, err
    assert message in err
    assert not out


def test_json_errors_are_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "show", "ghost", "--json")
    assert code == 3 and not out
    body = json.loads(err)["error"]
    assert body["code"] == "NotFound" and body["status"] == 404


def test_import_export_and_open(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, http_server: str
) -> None:
    require_engine("chromium")
    opened = run_json(capsys, "open", "web", "--url", f"{http_server}/set-cookie", "--exit")
    assert isinstance(opened, dict)
    assert opened["status"] == "ready" and opened["cookie_domains"] == ["127.0.0.1"]

    archive = tmp_path / "web.tar.zst"
    exported = run_json(capsys, "export", "web", str(archive), "--codec", "zstd")
    assert isinstance(exported, dict) and exported["bytes"] == archive.stat().st_size

    run_json(capsys, "create", "copy")
    imported = run_json(capsys, "import", "copy", str(archive))
    assert isinstance(imported, dict) and imported["cookie_domains"] == ["127.0.0.1"]

    code, _, err = run(capsys, "import", "copy", str(tmp_path / "nothing.tar.gz"))
    assert code == 2 and "No file provided" in err


def test_open_headed_without_a_display(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    code, _, err = run(capsys, "open", "someone", "--headed")
    assert code == 2 and "xvfb-run" in err
    with ProfileStore() as store:
        assert store.list().data == []  # refused before anything was created


def test_the_console_entry_point_runs(tmp_path: Path) -> None:
    env_home = tmp_path / "sub-home"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "profiles",
            "--home",
            str(env_home),
            "create",
            "via-module",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "via-module"
    assert ProfileStore(env_home).get("via-module").name == "via-module"


def _commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = sub
                found.update(_commands(sub, f"{prefix}{name} "))
    return found


def test_every_command_has_help_and_is_in_the_readme() -> None:
    readme = README.read_text("utf-8")
    commands = _commands(build_parser())
    assert len(commands) == 17
    for name, sub in commands.items():
        assert sub.description, f"'profiles {name}' has no help text"
        assert f"profiles {name}" in readme, f"'profiles {name}' is missing from README.md"
