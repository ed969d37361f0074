"""The ``profiles`` command: every command, JSON shapes, exit codes, real sessions.

Most tests call :func:`profiles.cli.main` in-process; a few run the real entry points
(``python -m profiles.cli``, ``python -m profiles``, the ``profiles`` script) as subprocesses.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import importlib.metadata
import io
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page

import driver
from driver import Session
from profiles import ProfileError, ProfileStore, StorageUnavailable
from profiles.cli.main import exit_code, main
from profiles.cli.output import (
    CLI_WORDING,
    _dumps,
    _duration,
    _plural,
    _Progress,
    cli_message,
    visible,
)
from profiles.cli.state import byte_size

from conftest import require_engine

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the project's .venv/bin/python under the test run
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def cli(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """``python -m profiles.cli ARGV`` in a subprocess (PROFILES_HOME is inherited)."""
    return subprocess.run(
        [PYTHON, "-m", "profiles.cli", *argv], capture_output=True, check=False, **kwargs
    )


class _Terminal(io.StringIO):
    """Text that claims to be a terminal (stdin for the delete prompt, stderr for the bar)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_tty_stdin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        yield


@pytest.fixture
def state_archive(store: ProfileStore, http_server: str, tmp_path: Path) -> Path:
    """A .tar.gz of a real Chromium profile that holds the /set-cookie cookies."""
    require_engine("chromium")
    with Session(profile="source", store=store) as page:
        page.goto(f"{http_server}/set-cookie")
    archive = tmp_path / "source.tar.gz"
    store.export_state("source", archive)
    return archive


# ---------------------------------------------------------------------------- profiles


def test_profile_commands_and_their_json(capsys: pytest.CaptureFixture[str]) -> None:
    created = run_json(
        capsys, "create", "prod", "--description", "main", "--label", "team=qa", "--label", "a=b"
    )
    assert created["name"] == "prod" and created["labels"] == {"a": "b", "team": "qa"}
    assert created["archetype"] == "desktop-chromium" and created["status"] == "empty"
    assert created["created_at"].endswith("Z")

    # --json (and the other global options) work before the command as well as after it
    code, out, _ = run(capsys, "--json", "show", "prod")
    assert code == 0 and json.loads(out)["id"] == created["id"]
    assert run_json(capsys, "show", created["id"])["name"] == "prod"

    code, out, _ = run(capsys, "show", "prod")
    assert code == 0
    assert "labels" in out and "a=b, team=qa" in out and "description       main" in out

    updated = run_json(capsys, "update", "prod", "--name", "prod-eu", "--clear-description")
    assert updated["name"] == "prod-eu" and updated["description"] is None
    # --label adds to the labels there are; --clear-labels --label replaces them
    relabelled = run_json(capsys, "update", "prod-eu", "--label", "team=data", "--label", "x=")
    assert relabelled["labels"] == {"a": "b", "team": "data", "x": ""}
    replaced = run_json(capsys, "update", "prod-eu", "--clear-labels", "--label", "only=1")
    assert replaced["labels"] == {"only": "1"}
    assert run_json(capsys, "update", "prod-eu", "--clear-labels")["labels"] == {}
    # the archetype is accepted when it does not change
    assert run_json(capsys, "update", "prod-eu", "--archetype", "desktop-chromium")["id"]

    clone = run_json(capsys, "clone", "prod-eu")
    assert clone["name"] == "prod-eu-copy" and clone["id"] != created["id"]
    mobile = run_json(capsys, "clone", "prod-eu", "--name", "phone", "--archetype", "pixel-7")
    assert mobile["archetype"] == "pixel-7"

    code, out, _ = run(capsys, "delete", "prod-eu-copy", "--yes")
    assert code == 0 and out.startswith("deleted prod-eu-copy (prof_")
    gone = run_json(capsys, "delete", "phone", "-y")
    assert gone == {"deleted": mobile["id"], "name": "phone"}
    listing = run_json(capsys, "list", "--all")
    assert [p["name"] for p in listing["data"]] == ["prod-eu"]


def test_list_pages_and_table(capsys: pytest.CaptureFixture[str], store: ProfileStore) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0 and out == "(no profiles)\n"
    for name in ("one", "two", "three"):
        run_json(capsys, "create", name)

    first = run_json(capsys, "list", "--limit", "2")
    assert set(first) == {"data", "has_more", "next_cursor"}
    assert [p["name"] for p in first["data"]] == ["three", "two"]
    assert first["has_more"] is True and first["next_cursor"] == first["data"][-1]["id"]
    rest = run_json(capsys, "list", "--limit", "2", "--cursor", first["next_cursor"])
    assert [p["name"] for p in rest["data"]] == ["one"] and rest["has_more"] is False
    every = run_json(capsys, "list", "--limit", "1", "--all")
    assert [p["name"] for p in every["data"]] == ["three", "two", "one"]
    assert every["has_more"] is False and every["next_cursor"] is None

    code, out, err = run(capsys, "list", "--limit", "2")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "ID", "ARCHETYPE", "STATUS", "SIZE", "USAGE", "LAST", "USED"]
    assert [r.split()[0] for r in rows] == ["three", "two"]
    # aligned columns: every row's id starts under the ID header
    column = header.index("ID")
    assert all(r[column:].startswith("prof_") for r in rows)
    assert f"--cursor {first['next_cursor']}" in err  # the next-page hint, not on stdout


def test_delete_asks_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_json(capsys, "create", "keep")
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    code, out, err = run(capsys, "delete", "keep")
    assert code == 1 and not out
    assert "Delete profile 'keep'" in err and "Not deleted" in err
    assert run_json(capsys, "show", "keep")["name"] == "keep"

    monkeypatch.setattr(sys, "stdin", _Terminal("yes\n"))
    code, out, _ = run(capsys, "delete", "keep")
    assert code == 0 and "deleted keep" in out
    assert run(capsys, "show", "keep")[0] == 3


def test_delete_without_a_terminal_needs_yes(
    capsys: pytest.CaptureFixture[str], no_tty_stdin: None
) -> None:
    run_json(capsys, "create", "keep")
    for extra in ((), ("--json",)):
        code, out, err = run(capsys, "delete", "keep", *extra)
        assert code == 2 and not out
        assert "stdin is not a terminal" in err and "--yes" in err
    assert run_json(capsys, "show", "keep")["name"] == "keep"


# ---------------------------------------------------------------------------- snapshots


def test_snapshot_lifecycle(capsys: pytest.CaptureFixture[str]) -> None:
    base = run_json(capsys, "create", "base", "--description", "kept", "--archetype", "pixel-7")
    run_json(capsys, "create", "other")
    snap = run_json(capsys, "snapshot", "create", "base", "--label", "v1", "--description", "d")
    assert snap["id"].startswith("psnap_") and snap["parent_profile_id"] == base["id"]
    assert snap["label"] == "v1" and snap["parent_archetype"] == "pixel-7"
    run_json(capsys, "snapshot", "create", "other")

    shown = run_json(capsys, "snapshot", "show", snap["id"])
    assert shown == snap
    mine = run_json(capsys, "snapshot", "list", "base")
    assert [s["id"] for s in mine["data"]] == [snap["id"]] and mine["has_more"] is False
    assert len(run_json(capsys, "snapshot", "list")["data"]) == 2
    assert len(run_json(capsys, "snapshot", "list", "--limit", "1", "--all")["data"]) == 2
    code, out, _ = run(capsys, "snapshot", "list", "base")
    assert code == 0 and out.split()[:6] == [
        "ID",
        "PARENT",
        "LABEL",
        "ARCHETYPE",
        "SIZE",
        "CAPTURED",
    ]
    assert snap["id"] in out and "v1" in out

    # restore: a new profile, the parent untouched; the parent may even be gone
    restored = run_json(capsys, "snapshot", "restore", snap["id"])
    assert restored["name"] == "base-restored" and restored["archetype"] == "pixel-7"
    assert restored["description"] == "d"  # the snapshot's description, not the parent's
    assert run_json(capsys, "delete", "base", "--yes")["deleted"] == base["id"]
    again = run_json(capsys, "snapshot", "restore", snap["id"], "--name", "base-again")
    assert again["name"] == "base-again"
    code, _, err = run(capsys, "--max-profiles", "3", "snapshot", "restore", snap["id"])
    assert code == 5 and "at most 3" in err

    code, out, _ = run(capsys, "snapshot", "delete", snap["id"])
    assert code == 0 and out == f"deleted {snap['id']}\n"
    assert run(capsys, "snapshot", "show", snap["id"])[0] == 3
    assert run(capsys, "snapshot", "delete", snap["id"])[0] == 3
    assert run(capsys, "snapshot", "restore", snap["id"])[0] == 3
    assert run(capsys, "snapshot", "list", "nobody")[0] == 3
    code, out, _ = run(capsys, "snapshot", "list", "base-again")
    assert code == 0 and out == "(no snapshots)\n"


# ---------------------------------------------------------------------------- audit, archetypes


def test_audit_filters_by_profile(capsys: pytest.CaptureFixture[str]) -> None:
    one = run_json(capsys, "create", "one")
    run_json(capsys, "create", "two")
    run_json(capsys, "update", "one", "--description", "changed")

    events = run_json(capsys, "audit", "--profile", "one")
    assert set(events) == {"data", "has_more", "next_cursor"}
    assert [e["type"] for e in events["data"]] == ["profile.updated", "profile.created"]
    assert {e["profile_id"] for e in events["data"]} == {one["id"]}
    assert len(run_json(capsys, "audit")["data"]) == 3
    page = run_json(capsys, "audit", "--limit", "1")
    assert len(page["data"]) == 1 and page["has_more"] is True

    # a deleted profile's events stay readable by its id
    run_json(capsys, "delete", "one", "--yes")
    kept = run_json(capsys, "audit", "--profile", one["id"])
    assert [e["type"] for e in kept["data"]] == [
        "profile.deleted",
        "profile.updated",
        "profile.created",
    ]
    assert run(capsys, "audit", "--profile", "nobody")[0] == 3

    code, out, _ = run(capsys, "audit", "--profile", "two")
    assert code == 0 and out.split()[:5] == ["AT", "TYPE", "NAME", "PROFILE", "DETAILS"]
    assert "profile.created" in out and "name=two" in out


def test_archetypes_filter_by_engine(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    firefox = run_json(capsys, "archetypes", "--engine", "firefox")
    assert set(firefox) == {"data", "has_more", "next_cursor"} and firefox["has_more"] is False
    assert {a["engine"] for a in firefox["data"]} == {"firefox"}
    assert "desktop-firefox" in {a["name"] for a in firefox["data"]}

    code, out, _ = run(capsys, "archetypes", "--engine", "chromium")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "ENGINE", "DEVICE", "VIEWPORT", "MOBILE"]
    by_name = {r.split()[0]: r for r in rows}
    assert "pixel-7" in by_name and "iphone-15-pro" not in by_name
    assert by_name["pixel-7"].rstrip().endswith("yes")
    assert "1280x720" in by_name["desktop-chromium"]
    assert run(capsys, "archetypes", "--engine", "opera")[0] == 2
    assert not home.exists()  # listing archetypes needs no store


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        pytest.param(["create", "bad name"], 2, "whitespace", id="validation-name"),
        pytest.param(["create", "x" * 65], 2, "65 characters", id="validation-length"),
        pytest.param(
            ["create", "ok", "--archetype", "iphone-15-por"], 2, "iphone-15-pro", id="archetype"
        ),
        pytest.param(["create", "ok", "--label", "novalue"], 2, "KEY=VALUE", id="label-syntax"),
        pytest.param(["create", "ok", "--label", "=v"], 2, "Label key ''", id="label-key"),
        pytest.param(["update", "taken", "--archetype", "pixel-7"], 2, "clone", id="sticky"),
        pytest.param(["update", "taken"], 2, "Nothing to change", id="update-nothing"),
        pytest.param(
            ["update", "taken", "--description", "d", "--clear-description"],
            2,
            "not allowed with",
            id="update-exclusive",
        ),
        pytest.param(["export", "taken", "out.tar.gz"], 2, "no data to download", id="no-state"),
        pytest.param(["list", "--limit", "101"], 2, "1 to 100", id="limit"),
        pytest.param(["list", "--limit", "many"], 2, "invalid int", id="limit-type"),
        pytest.param(["list", "--cursor", "prof_gone"], 2, "cursor", id="cursor"),
        pytest.param(["frobnicate"], 2, "invalid choice", id="unknown-command"),
        pytest.param([], 2, "required", id="no-command"),
        pytest.param(["snapshot"], 2, "required", id="no-snapshot-command"),
        pytest.param(["show", "missing"], 3, "not found", id="not-found"),
        pytest.param(["delete", "missing", "--yes"], 3, "not found", id="delete-missing"),
        pytest.param(["create", "taken"], 4, "already exists", id="conflict"),
        pytest.param(["clone", "taken", "--name", "taken"], 4, "already exists", id="clone"),
        pytest.param(["--max-profiles", "1", "create", "more"], 5, "at most 1", id="tier"),
        pytest.param(["clone", "taken", "--max-profiles", "1"], 5, "at most 1", id="tier-clone"),
        pytest.param(["--max-profiles", "-1", "list"], 2, "--max-profiles", id="max-profiles"),
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
    assert main(["create", "taken"]) == 0
    capsys.readouterr()
    got, out, err = run(capsys, *argv)
    assert (got, message in err) == (code, True), err
    assert not out


def test_json_errors_go_to_stderr_as_one_document(
    capsys: pytest.CaptureFixture[str], store: ProfileStore
) -> None:
    code, out, err = run(capsys, "show", "ghost", "--json")
    assert code == 3 and not out
    body = json.loads(err)["error"]
    assert body["code"] == "NotFound" and body["status"] == 404 and body["ref"] == "ghost"

    run_json(capsys, "create", "one")
    code, out, err = run(capsys, "--json", "--max-profiles", "1", "create", "two")
    assert code == 5 and not out
    body = json.loads(err)["error"]
    assert body["code"] == "TierLimit" and (body["limit"], body["current"]) == (1, 1)

    code, out, err = run(capsys, "create", "x", "--label", "novalue", "--json")
    assert code == 2 and not out
    assert json.loads(err)["error"]["code"] == "UsageError"


def test_file_errors_and_a_closed_pipe(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run_json(capsys, "create", "one")
    code, out, err = run(capsys, "import", "one", str(tmp_path / "missing.tar.gz"))
    assert code == 1 and "no such file" in err and not out  # a file error (docs/cli.md)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not an archive at all")
    code, _, err = run(capsys, "import", "one", str(garbage), "--json")
    assert code == 2 and json.loads(err)["error"]["code"] == "ArchiveInvalid"
    assert run_json(capsys, "show", "one")["status"] == "empty"

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["list"]) == 141


def test_import_waits_for_the_writer_lock(
    capsys: pytest.CaptureFixture[str], store: ProfileStore, tmp_path: Path
) -> None:
    store.create("busy")
    archive = tmp_path / "any.tar.gz"
    archive.write_bytes(b"whatever")
    with store.lock("busy"):
        code, _, err = run(capsys, "import", "busy", str(archive), "--lock-timeout", "0")
    assert code == 4 and "in use" in err and f"pid {os.getpid()}" in err


def test_verbose_logs_to_stderr_for_one_command_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-v", "create", "one")
    assert code == 0 and "INFO profiles.service.catalog: created profile one" in err
    code, _, err = run(capsys, "create", "two")
    assert code == 0 and not err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "exit codes" in out and "snapshot" in out
    code, out, _ = run(capsys, "open", "--help")
    assert code == 0 and "xvfb-run" in out and "--exit" in out


def test_progress_bar_only_on_a_terminal_and_for_big_files() -> None:
    big = 8 * 1024 * 1024
    terminal = _Terminal()
    bar = _Progress(big, "importing", stream=terminal)
    for done in range(0, big + 1, big // 4):
        bar(done)
    bar.finish()
    shown = terminal.getvalue()
    assert "importing [" in shown and "100%" in shown and " 50%" in shown
    assert shown.endswith("\n")

    for total, stream in ((1024 * 1024, _Terminal()), (big, io.StringIO()), (None, _Terminal())):
        quiet = _Progress(total, "exporting", stream=stream)
        quiet(1024)
        quiet.finish()
        assert stream.getvalue() == ""


# ---------------------------------------------------------------------------- open, no browser


def test_open_headed_without_a_display(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    code, out, err = run(capsys, "open", "someone", "--headed", "--url", "https://example.com")
    assert code == 2 and not out
    assert "DISPLAY" in err and "xvfb-run profiles open someone" in err and "drop --headed" in err
    with ProfileStore() as store:
        assert store.list().data == []  # refused before anything was created


def test_open_refuses_before_launching(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_json(capsys, "create", "phone", "--archetype", "pixel-7")
    cases = [
        (["open", "ghost", "--no-create"], 3, "not found"),
        (["open", "bad name"], 2, "whitespace"),
        (["open", "new", "--archetype", "iphone-15-por"], 2, "iphone-15-pro"),
        (["open", "phone", "--archetype", "desktop-firefox"], 2, "pinned to 'pixel-7'"),
        (["--max-profiles", "1", "open", "another"], 5, "at most 1"),
    ]
    for argv, code, message in cases:
        got, out, err = run(capsys, *argv)
        assert (got, message in err, out) == (code, True, ""), (argv, err)
    monkeypatch.setenv("PROFILES_CHROMIUM_PATH", "/nonexistent/chromium")
    code, _, err = run(capsys, "open", "phone", "--exit")
    assert code == 6 and "PROFILES_CHROMIUM_PATH" in err
    assert [p["name"] for p in run_json(capsys, "list")["data"]] == ["phone"]


# ---------------------------------------------------------------------------- real browser


def test_open_with_url_and_exit_commits(
    capsys: pytest.CaptureFixture[str], store: ProfileStore, http_server: str
) -> None:
    require_engine("chromium")
    opened = run_json(capsys, "open", "web", "--url", f"{http_server}/set-cookie", "--exit")
    assert opened["name"] == "web" and opened["status"] == "ready"
    assert opened["cookie_domains"] == ["127.0.0.1"] and opened["usage_count"] == 1

    # the state it committed is what the next session starts from
    with Session(profile="web", store=store, readonly=True) as page:
        cookies = {c["name"] for c in page.context.cookies()}
    assert {"persistent", "sessiononly"} <= cookies

    code, out, err = run(capsys, "open", "web", "--readonly", "--exit")
    assert code == 0 and out == "closed web (read-only, nothing saved)\n", err
    code, out, _ = run(capsys, "open", "web", "--url", f"{http_server}/", "--exit")
    assert code == 0 and out.startswith("saved web: ready, ") and "cookies of 1 domain" in out
    assert store.get("web").usage_count == 4  # three opens and the read-only check
    assert run(capsys, "open", "web", "--exit", "--no-create", "--archetype", "pixel-7")[0] == 2


@pytest.mark.parametrize(
    ("sig", "to_group"),
    [
        # Ctrl-C in a terminal signals the whole process group, Playwright's driver included
        pytest.param(signal.SIGINT, True, id="ctrl-c"),
        pytest.param(signal.SIGTERM, False, id="sigterm"),
    ],
)
def test_open_waits_for_a_signal_and_commits(
    http_server: str, home: Path, sig: signal.Signals, to_group: bool
) -> None:
    require_engine("chromium")
    proc = subprocess.Popen(
        [PYTHON, "-m", "profiles.cli", "open", "typed", "--url", f"{http_server}/set-cookie"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        if banner.startswith("WARNING profiles.store:"):  # $PROFILES_HOME is new: said first
            assert "did not exist" in banner
            banner = proc.stderr.readline()
        assert "Browser open on profile typed" in banner and "Ctrl-C" in banner
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.startswith("saved typed: ready")
    with ProfileStore(home) as store:
        profile = store.get("typed")
        assert profile.status == "ready" and profile.cookie_domains == ["127.0.0.1"]


class _BrowserQuits(Session):
    """A real session whose browser quits on its own right after it started, as it does
    when the user closes the last window."""

    def __enter__(self) -> Page:
        page = super().__enter__()
        with contextlib.suppress(PlaywrightError):
            self.context.new_cdp_session(page).send("Browser.close")
        return page


def test_open_says_so_when_the_browser_closes_on_its_own(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, store: ProfileStore
) -> None:
    require_engine("chromium")
    store.create("quits")
    monkeypatch.setattr(driver, "Session", _BrowserQuits)
    code, out, err = run(capsys, "open", "quits", "--json")
    assert code == 1 and not out
    body = json.loads(err.strip().splitlines()[-1])["error"]
    assert body["code"] == "StateCommitFailed" and "Nothing was saved to 'quits'" in body["message"]
    assert store.get("quits").status == "empty"


def test_import_export_round_trip(
    capsys: pytest.CaptureFixture[str], store: ProfileStore, state_archive: Path, tmp_path: Path
) -> None:
    run_json(capsys, "create", "copy")
    imported = run_json(capsys, "import", "copy", str(state_archive))
    assert imported["status"] == "ready" and imported["cookie_domains"] == ["127.0.0.1"]

    zst = tmp_path / "copy.tar.zst"
    exported = run_json(capsys, "export", "copy", str(zst), "--codec", "zstd")
    assert exported == {
        "profile": imported["id"],
        "file": str(zst),
        "bytes": zst.stat().st_size,
        "codec": "zstd",
    }
    assert zst.read_bytes()[:4] == ZSTD_MAGIC
    gz = tmp_path / "copy.tar.gz"
    code, out, _ = run(capsys, "export", "copy", str(gz))
    assert code == 0 and out.startswith(f"exported copy to {gz} (") and "gzip" in out
    assert gz.read_bytes()[:2] == GZIP_MAGIC
    with tarfile.open(fileobj=gzip.open(gz)) as tar:
        assert any(name.endswith("Cookies") for name in tar.getnames())

    run_json(capsys, "create", "again")
    code, out, _ = run(capsys, "import", "again", str(zst))
    assert code == 0 and out.startswith("imported ") and out.endswith(" into again (ready)\n")
    assert store.get("again").cookie_domains == ["127.0.0.1"]

    # a Chromium state does not go into a Firefox profile
    run_json(capsys, "create", "fox", "--archetype", "desktop-firefox")
    code, _, err = run(capsys, "import", "fox", str(gz))
    assert code == 2 and "chromium profile" in err
    assert store.get("fox").status == "empty"
    # file system errors are reported, not raised
    code, _, err = run(capsys, "export", "copy", str(tmp_path / "no" / "such" / "dir.tar.gz"))
    assert code == 1 and f"the directory {tmp_path / 'no' / 'such'} does not exist" in err

    # state stamped by a newer browser major is refused by open (BrowserDowngrade)
    stamped = run_json(capsys, "import", "again", str(gz), "--browser-version", "9999.0.0.1")
    assert stamped["browser_version"] == "9999.0.0.1"
    code, _, err = run(capsys, "open", "again", "--exit")
    assert code == 4 and "newer than" in err


def test_open_waits_for_the_writer_lock(
    capsys: pytest.CaptureFixture[str], store: ProfileStore
) -> None:
    require_engine("chromium")
    store.create("busy")
    with store.lock("busy"):
        code, _, err = run(capsys, "open", "busy", "--exit", "--lock-timeout", "0")
    assert code == 4 and "in use" in err


def test_import_and_export_through_pipes(state_archive: Path, home: Path) -> None:
    assert cli("create", "piped").returncode == 0
    result = cli("import", "piped", "-", "--json", input=state_archive.read_bytes())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cookie_domains"] == ["127.0.0.1"]

    exported = cli("export", "piped", "-", "--codec", "zstd")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout[:4] == ZSTD_MAGIC and not exported.stderr
    assert cli("create", "piped-2").returncode == 0
    again = cli("import", "piped-2", "-", input=exported.stdout)
    assert again.returncode == 0, again.stderr
    with ProfileStore(home) as store:
        assert store.get("piped-2").cookie_domains == ["127.0.0.1"]


# ---------------------------------------------------------------------------- entry points


def test_the_entry_points_run(tmp_path: Path) -> None:
    env_home = tmp_path / "sub-home"
    made = cli("--home", str(env_home), "create", "via-cli", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["name"] == "via-cli"

    package = subprocess.run(
        [PYTHON, "-m", "profiles", "show", "via-cli", "--home", str(env_home)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert package.returncode == 0 and "via-cli" in package.stdout

    script = Path(PYTHON).parent / "profiles"
    assert script.is_file(), "the 'profiles' console script is not installed in the venv"
    # The script imports the package the venv was installed from; this checkout's, please
    # (a venv shared by several checkouts of the project points at one of them).
    listed = subprocess.run(
        [str(script), "list", "--home", str(env_home)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert listed.returncode == 0 and "via-cli" in listed.stdout

    missing = cli("--home", str(env_home), "show", "ghost")
    assert missing.returncode == 3 and missing.stderr.startswith(b"error: ") and not missing.stdout
    with ProfileStore(env_home) as store:
        assert store.get("via-cli").name == "via-cli"


# ---------------------------------------------------------------------------- helpers for below


def fake_state(root: Path, engine: str = "chromium", domains: tuple[str, ...] = ()) -> Path:
    """A .tar.gz of a minimal user-data-dir that the store takes for ``engine``'s, with
    cookies of ``domains`` (no browser needed)."""
    state = root / f"{engine}-state"
    if engine == "chromium":
        (state / "Default").mkdir(parents=True)
        (state / "Local State").write_text("{}")
        (state / "Default" / "Preferences").write_text("{}")
        db, table, column = state / "Default" / "Cookies", "cookies", "host_key"
    else:
        state.mkdir(parents=True)
        (state / "prefs.js").write_text("")
        db, table, column = state / "cookies.sqlite", "moz_cookies", "host"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(f"CREATE TABLE {table} ({column} TEXT)")
        conn.executemany(f"INSERT INTO {table} VALUES (?)", [(d,) for d in domains])
    archive = root / f"{engine}-state.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(state.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(state)), recursive=False)
    return archive


@contextlib.contextmanager
def held_by_another_process(name: str) -> Iterator[int]:
    """A real second process that holds the writer lock of profile ``name``; its pid."""
    code = (
        "import sys, time\n"
        "from profiles import ProfileStore\n"
        "store = ProfileStore()\n"
        "lock = store.lock(sys.argv[1])\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    with subprocess.Popen(
        [PYTHON, "-c", code, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line == "held\n", proc.stderr.read() if proc.stderr else line
            yield proc.pid
        finally:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------- B: no store by typo


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["show", "prod"],
        ["audit"],
        ["snapshot", "list"],
        ["snapshot", "show", "psnap_x"],
        ["export", "prod", "out.tar.gz"],
        ["ps"],
        ["update", "prod", "--name", "p2"],
        ["delete", "prod", "--yes"],
        ["snapshot", "create", "prod"],
        ["import", "prod", "in.tar.gz"],
        ["open", "prod", "--no-create"],
        ["cache", "prune"],
    ],
    ids=" ".join,
)
def test_commands_that_need_a_store_never_create_one(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    home: Path,
    argv: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert (code, out) == (3, ""), err
    assert f"No profile store at {home} (from $PROFILES_HOME)" in err
    assert "does not exist" in err and "profiles create NAME" in err
    assert not home.exists()

    typo = tmp_path / "hmoe"
    code, out, err = run(capsys, *argv, "--home", str(typo), "--json")
    body = json.loads(err)["error"]
    assert (code, out, body["code"], body["resource"]) == (3, "", "NotFound", "store")
    assert f"{typo} (from --home)" in body["message"] and not typo.exists()

    # a directory that is not a store is not made one either
    typo.mkdir()
    code, _, err = run(capsys, *argv, "--home", str(typo))
    assert code == 3 and "has no catalog.sqlite3" in err
    assert list(typo.iterdir()) == []


def test_version_names_the_store_in_use(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path
) -> None:
    version = importlib.metadata.version("playwright-profiles")
    code, out, err = run(capsys, "--version")
    assert code == 0, err
    assert out.splitlines() == [
        f"profiles {version} (playwright-profiles)",
        f"store: {home} (from $PROFILES_HOME; no profile store there yet)",
    ]
    assert not home.exists()
    run_json(capsys, "create", "one")
    code, out, _ = run(capsys, "--version", "--home", str(home))
    assert code == 0 and f"store: {home} (from --home; a profile store)" in out
    shown = run_json(capsys, "--version")
    assert shown == {
        "version": version,
        "home": str(home),
        "home_source": "$PROFILES_HOME",
        "exists": True,
        "catalog": None,
        "blobs": None,
    }
    # a shared backend is named without its password
    shared = run_json(
        capsys, "--version", "--catalog", "postgresql://u:s3cret@db/profiles", "--blobs", "s3://b/p"
    )
    assert shared["catalog"] == "postgresql://u:***@db/profiles" and shared["blobs"] == "s3://b/p"
    # without a command and without --version it is still a usage error
    assert run(capsys)[0] == 2


# ---------------------------------------------------------------------------- C, D: who holds it


def test_show_and_ps_name_the_holder(
    capsys: pytest.CaptureFixture[str], store: ProfileStore
) -> None:
    store.create("busy")
    store.create("idle")
    code, out, _ = run(capsys, "ps")
    assert (code, out) == (0, "(no profile is in use)\n")
    assert re.search(r"^held by +-$", run(capsys, "show", "idle")[1], re.MULTILINE)
    with held_by_another_process("busy") as pid:
        code, out, _ = run(capsys, "show", "busy")
        assert code == 0
        held = next(line for line in out.splitlines() if line.startswith("held by"))
        assert f"session, pid {pid} on {socket.gethostname()}, since " in held
        assert re.search(r"\(for \d+s\)$", held), held
        assert re.search(r"^held by +-$", run(capsys, "show", "idle")[1], re.MULTILINE)

        code, out, _ = run(capsys, "ps")
        header, *rows = out.splitlines()
        assert header.split() == ["NAME", "ID", "KIND", "HOST", "PID", "SINCE", "FOR"]
        assert len(rows) == 1 and rows[0].split()[:5] == [
            "busy",
            store.get("busy").id,
            "session",
            socket.gethostname(),
            str(pid),
        ]
        listed = run_json(capsys, "ps")
        assert (listed["has_more"], listed["next_cursor"]) == (False, None)
        (row,) = listed["data"]
        assert row["profile_name"] == "busy" and row["kind"] == "session"
        assert row["pid"] == pid and row["since"].endswith("Z")
    assert run(capsys, "ps")[1] == "(no profile is in use)\n"


def test_delete_of_a_held_profile_names_the_holder(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, store: ProfileStore
) -> None:
    store.create("busy")
    with held_by_another_process("busy") as pid:
        with open(os.devnull) as devnull:
            monkeypatch.setattr(sys, "stdin", devnull)
            code, out, err = run(capsys, "delete", "busy")
        assert code == 2 and not out
        assert f"in use right now: session, pid {pid}" in err and "--yes" in err

        monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
        code, _, err = run(capsys, "delete", "busy")
        assert code == 1 and f"warning: 'busy' is in use right now: session, pid {pid}" in err
        assert "Delete profile 'busy'" in err and store.get("busy")

        code, out, err = run(capsys, "delete", "busy", "--yes")
        assert code == 0 and out.startswith("deleted busy")
        assert f"pid {pid}" in err and "Deleting it anyway (--yes)" in err
    # a profile nobody holds is deleted without a warning
    store.create("free")
    code, _, err = run(capsys, "delete", "free", "--yes")
    assert code == 0 and not err


# ---------------------------------------------------------------------------- E: messages


def test_library_wording_becomes_cli_flags(
    capsys: pytest.CaptureFixture[str], store: ProfileStore
) -> None:
    assert cli_message(
        "Wait for that session to end, raise lock_timeout, or open it with readonly=True."
    ) == ("Wait for that session to end, raise --lock-timeout, or use --readonly.")
    assert cli_message("Delete a profile or raise max_profiles.") == (
        "Delete a profile or raise --max-profiles."
    )
    # the table is kept in one place; each entry says what it replaces
    for python, flag in CLI_WORDING:
        assert cli_message(f"... {python} ...") == f"... {flag} ...", python
    # a profile name in a message is never rewritten (names have no spaces)
    assert cli_message("Profile 'lock_timeout' not found.") == "Profile 'lock_timeout' not found."

    # what the commands print
    store.create("busy")
    archive = store.home / "x.tar.gz"
    archive.write_bytes(b"x")
    with store.lock("busy"):
        code, _, err = run(capsys, "import", "busy", str(archive), "--lock-timeout", "0")
        _, _, json_err = run(
            capsys, "import", "busy", str(archive), "--lock-timeout", "0", "--json"
        )
    assert code == 4 and "raise --lock-timeout, or use --readonly" in err
    assert "lock_timeout" not in err and "readonly=True" not in err
    assert "raise --lock-timeout" in json.loads(json_err)["error"]["message"]
    code, _, err = run(capsys, "--max-profiles", "1", "create", "more")
    assert code == 5 and "raise --max-profiles" in err
    store.create("fox", archetype="desktop-firefox")
    code, _, err = run(capsys, "clone", "fox", "--with-state", "--archetype", "pixel-7")
    assert code == 2 and "clone without --with-state" in err


def test_plurals() -> None:
    assert [_plural(n, "domain") for n in (0, 1, 2)] == ["0 domains", "1 domain", "2 domains"]
    assert _plural(1, "working copy", "working copies") == "1 working copy"
    assert _plural(3, "working copy", "working copies") == "3 working copies"
    assert [_duration(s) for s in (0, 59, 61, 3600 + 65, 90000)] == [
        "0s",
        "59s",
        "1m 01s",
        "1h 01m",
        "1d 01h",
    ]


def test_export_checks_its_file_first(
    capsys: pytest.CaptureFixture[str], store: ProfileStore, tmp_path: Path
) -> None:
    store.create("web")
    store.import_state("web", fake_state(tmp_path, domains=("example.test",)))
    missing = tmp_path / "missing" / "dir"
    code, out, err = run(capsys, "export", "web", str(missing / "out.tar.gz"))
    assert (code, out) == (1, "")
    assert f"the directory {missing} does not exist" in err and ".out.tar.gz." not in err
    code, _, err = run(capsys, "export", "web", str(missing / "out.tar.gz"), "--json")
    assert code == 1 and str(missing) in json.loads(err)["error"]["message"]

    target = tmp_path / "out.tar.gz"
    target.write_bytes(b"precious")
    code, out, err = run(capsys, "export", "web", str(target))
    assert (code, out) == (2, "") and f"{target} exists: pass --force" in err
    assert target.read_bytes() == b"precious"
    code, out, _ = run(capsys, "export", "web", str(target), "--force")
    assert code == 0 and target.read_bytes()[:2] == GZIP_MAGIC
    code, _, err = run(capsys, "export", "web", str(tmp_path))
    assert code == 2 and "is a directory" in err


def test_audit_shows_names_beside_ids(
    capsys: pytest.CaptureFixture[str], store: ProfileStore
) -> None:
    one, two = store.create("one"), store.create("two")
    store.update("two", name="deux", description="renamed")
    store.update("one", description="changed")
    store.delete("one")
    code, out, _ = run(capsys, "audit")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["AT", "TYPE", "NAME", "PROFILE", "DETAILS"]
    expected = [
        ("profile.deleted", "one (deleted)", one.id),
        ("profile.updated", "one (deleted)", one.id),
        ("profile.updated", "deux", two.id),
        ("profile.created", "deux", two.id),
        ("profile.created", "one (deleted)", one.id),
    ]
    assert len(rows) == len(expected)
    for row, (type_, name, id_) in zip(rows, expected, strict=True):
        assert re.search(rf"Z  {re.escape(type_)}\s+{re.escape(name)}\s+{id_}\s", row), row

    # a deleted profile's name is found when its naming events are on another page
    newest = store.audit(limit=1).data[0]
    code, out, _ = run(capsys, "audit", "--limit", "1", "--cursor", newest.id)
    assert code == 0 and "profile.updated" in out and f"one (deleted)  {one.id}" in out


# ---------------------------------------------------------------------------- G: import --create


IMPORT_CREATE = ("import", "prod", "-", "--create", "--archetype", "pixel-7", "--json")


def test_import_create_through_a_pipe_into_a_fresh_home(
    store: ProfileStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store.create("prod", archetype="pixel-7")
    store.import_state("prod", fake_state(tmp_path, domains=("example.test",)))
    fresh = tmp_path / "other-host"
    # profiles export prod - | profiles import prod - --create, as two real processes
    with subprocess.Popen(
        [PYTHON, "-m", "profiles.cli", "export", "prod", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as exporter:
        importer = subprocess.run(
            [PYTHON, "-m", "profiles.cli", "--home", str(fresh), *IMPORT_CREATE],
            stdin=exporter.stdout,
            capture_output=True,
            check=False,
        )
        assert exporter.stdout is not None
        exporter.stdout.close()
        assert exporter.wait() == 0
    assert importer.returncode == 0, importer.stderr
    made = json.loads(importer.stdout)
    assert (made["name"], made["archetype"], made["status"]) == ("prod", "pixel-7", "ready")
    assert made["cookie_domains"] == ["example.test"]

    # into an existing profile --create just imports; without --create a missing one is 3
    archive = tmp_path / "chromium-state.tar.gz"
    code, out, err = run(capsys, "--home", str(fresh), "import", "prod", str(archive), "--create")
    assert code == 0 and out.startswith("imported "), err
    code, out, err = run(capsys, "--home", str(fresh), "import", "other", str(archive))
    assert code == 3 and "not found" in err
    with ProfileStore(fresh) as other:
        assert [p.name for p in other.iter_profiles()] == ["prod"]


def test_import_create_says_which_archetype_fits(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path
) -> None:
    firefox = fake_state(tmp_path, engine="firefox")
    code, out, err = run(capsys, "import", "fox", str(firefox), "--create")
    assert (code, out) == (2, "")
    assert "holds a firefox profile" in err and "--create --archetype desktop-firefox" in err
    assert "'fox' was not kept" in err
    assert run(capsys, "show", "fox")[0] == 3  # a retry starts clean
    code, out, err = run(
        capsys, "import", "fox", str(firefox), "--create", "--archetype", "desktop-firefox"
    )
    assert code == 0 and out.startswith("created and imported ") and "into fox (ready)" in out
    # into an existing profile of the other engine: the same advice, for a new profile
    code, _, err = run(capsys, "import", "fox", str(fake_state(tmp_path / "c")), "--json")
    body = json.loads(err)["error"]
    assert code == 2 and body["suggested_archetype"] == "desktop-chromium"
    assert "profiles import NEW-NAME FILE --create --archetype desktop-chromium" in body["message"]
    # --archetype without --create, or against an existing profile's, is refused
    assert run(capsys, "import", "fox", str(firefox), "--archetype", "pixel-7")[0] == 2
    code, _, err = run(capsys, "import", "fox", str(firefox), "--create", "--archetype", "pixel-7")
    assert code == 2 and "pinned to 'desktop-firefox'" in err


# ---------------------------------------------------------------------------- H: labels


def test_update_removes_labels(capsys: pytest.CaptureFixture[str], store: ProfileStore) -> None:
    store.create("p", labels={"a": "1", "b": "2", "c": "3"})
    got = run_json(capsys, "update", "p", "--remove-label", "a", "--remove-label", "zz")
    assert got["labels"] == {"b": "2", "c": "3"}
    got = run_json(capsys, "update", "p", "--remove-label", "b", "--label", "d=4")
    assert got["labels"] == {"c": "3", "d": "4"}
    code, _, err = run(capsys, "update", "p", "--remove-label", "c", "--label", "c=5")
    assert code == 2 and "both name c" in err
    assert store.get("p").labels == {"c": "3", "d": "4"}


def test_update_labels_keeps_a_concurrent_change(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, store: ProfileStore
) -> None:
    """Another writer adds a label between what the CLI reads and what it writes: with the
    store's merge inside one transaction, both labels stay."""
    store.create("p", labels={"a": "1"})
    real_update = ProfileStore.update
    raced = []

    @functools.wraps(real_update)  # the CLI asks the signature what the store can do
    def racing_update(self: ProfileStore, ref: str, **kwargs: Any) -> Any:
        if not raced:
            raced.append(True)
            with ProfileStore(store.home) as other:
                real_update(other, "p", labels={**other.get("p").labels, "other": "x"})
        return real_update(self, ref, **kwargs)

    monkeypatch.setattr(ProfileStore, "update", racing_update)
    got = run_json(capsys, "update", "p", "--label", "mine=y", "--remove-label", "a")
    assert got["labels"] == {"other": "x", "mine": "y"}


# ---------------------------------------------------------------------------- I: cache prune


def test_byte_sizes() -> None:
    assert [byte_size(t) for t in ("0", "123", "500M", "2G", "1.5KiB", "3 gb", "1t")] == [
        0,
        123,
        500 * 1024**2,
        2 * 1024**3,
        1536,
        3 * 1024**3,
        1024**4,
    ]
    for bad in ("", "lots", "-1", "2X", "1e3"):
        with pytest.raises(argparse.ArgumentTypeError):
            byte_size(bad)


def test_cache_prune_refuses_a_bad_size(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "cache", "prune", "--max-size", "lots")
    assert (code, out) == (2, "") and "500M" in err
    assert run(capsys, "cache")[0] == 2


def test_cache_prune(
    capsys: pytest.CaptureFixture[str], store: ProfileStore, tmp_path: Path
) -> None:
    archive = fake_state(tmp_path, domains=("example.test",))
    kept, evicted = store.create("kept"), store.create("evicted")
    store.import_state("evicted", archive)  # an import leaves a working copy
    store.import_state("kept", archive)
    code, out, _ = run(capsys, "cache", "prune", "--max-size", "1G")
    assert code == 0 and out.startswith("removed 0 working copies, freed 0 B; ")
    work = store.working_copies.path(kept.id)
    one_copy = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    got = run_json(capsys, "cache", "prune", "--max-size", str(one_copy))
    assert got["removed"] == [evicted.id] and got["freed_bytes"] > 0
    assert got["kept_bytes"] <= one_copy
    code, out, _ = run(capsys, "cache", "prune", "--max-size", "0")
    assert code == 0 and out.startswith("removed 1 working copy, freed ")
    assert run_json(capsys, "show", "kept")["status"] == "ready"  # nothing committed is lost


# ---------------------------------------------------------------------------- J: terminal safety

HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202egnp.exe\u2066x\x7f\nline2\ttab"


def test_control_characters_never_reach_the_terminal(
    capsys: pytest.CaptureFixture[str], store: ProfileStore, tmp_path: Path
) -> None:
    store.create("p", description=HOSTILE)
    store.import_state("p", fake_state(tmp_path, domains=("\x1b[31mevil.test",)))
    store.snapshot("p", description=HOSTILE)
    unsafe = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
    for argv in (["show", "p"], ["snapshot", "list"], ["audit"], ["list"]):
        code, out, err = run(capsys, *argv)
        assert code == 0 and not unsafe.search(out + err), (argv, out)
    code, out, _ = run(capsys, "show", "p")
    description = next(line for line in out.splitlines() if line.startswith("description"))
    assert description.endswith(
        "\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202egnp.exe\\u2066x\\x7f\\x0aline2\\x09tab"
    )
    # A cookie host name with an escape sequence, read from an archive, is dropped when the
    # state is read, or shown escaped: never raw.
    assert "\x1b[31m" not in out
    snap = store.snapshots("p").data[0]
    code, out, _ = run(capsys, "snapshot", "show", snap.id)
    assert code == 0 and not unsafe.search(out) and "\\x1b[2J" in out

    # JSON keeps the text exact but escapes it all: json.dumps escapes C0 itself, the CLI
    # also escapes DEL, C1 and the bidi controls that ensure_ascii=False lets through
    for argv in (["show", "p"], ["snapshot", "show", snap.id], ["list"], ["audit"]):
        code, out, _ = run(capsys, *argv, "--json")
        assert code == 0 and not unsafe.search(out), argv
    code, out, _ = run(capsys, "show", "p", "--json")
    shown = json.loads(out)
    assert shown["description"] == HOSTILE
    assert "\\u001b[2J" in out and "\\u009b" in out and "\\u202e" in out and "é" not in out
    assert json.loads(_dumps({"t": "é\u202e"})) == {"t": "é\u202e"} and "é" in _dumps("é")

    # errors too: a message that carries hostile text is escaped
    code, _, err = run(capsys, "show", "\x1b[2Jx")
    assert code == 3 and not unsafe.search(err)


def test_visible_escapes_exactly_the_unsafe_characters() -> None:
    assert visible("plain é ü 漢字 🙂 -- \\") == "plain é ü 漢字 🙂 -- \\"
    assert visible("\x00\x1f\x7f\x80\x9f\u202a\u202e\u2066\u2069") == (
        "\\x00\\x1f\\x7f\\x80\\x9f\\u202a\\u202e\\u2066\\u2069"
    )
    assert visible("\u200b\u00a0") == "\u200b\u00a0"  # not controls: left alone


# ---------------------------------------------------------------------------- K, F


def test_storage_unavailable_has_its_own_exit_code() -> None:
    error = StorageUnavailable("The disk is full.", home="/x", cause="ENOSPC")
    assert exit_code(error) == 7
    assert exit_code(ProfileError("other")) == 1


def test_open_help_says_closing_the_window_saves(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "open", "--help")
    text = " ".join(out.split())
    assert code == 0 and "WITHOUT saving" not in text
    assert "closing that window also ends the session and SAVES the profile" in text
    code, out, _ = run(capsys, "--help")
    assert "Ctrl-C or closing the window saves" in " ".join(out.split())


def test_migrate_converts_archive_states_and_skips_profiles_in_use(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path
) -> None:
    from support.storefaults import chromium_archive

    with ProfileStore(home, chunked=False) as old:  # states as written before chunking
        for name in ("a", "b", "lost"):
            old.create(name)
            old.import_state(name, chromium_archive(tmp_path / f"{name}.tar.gz", tmp_path / name))
        old.create("empty")
        before = {name: old.get(name).checksum for name in ("a", "b", "lost")}
        old.blobs.delete(str(before["lost"]))  # a damaged store: that state's bytes are gone
    with ProfileStore(home) as store, store.lock("b"):  # a session holds b
        code, out, err = run(capsys, "--home", str(home), "migrate")
        assert code == 1, err  # StateCorrupt, after converting what it could
        assert out.splitlines()[0].startswith("migrated a: ")
        assert out.splitlines()[-1] == "migrated 1 profile; 1 had nothing to convert"
        assert "b: in use, not migrated" in err
        assert "lost: not migrated: The committed state of profile 'lost'" in err
        assert store.get("a").checksum != before["a"]
        assert store.get("b").checksum == before["b"]
    with ProfileStore(home) as store, store.lock("b"):
        store.delete("lost")
        code, out, err = run(capsys, "--home", str(home), "migrate")
        assert code == 4 and "profiles migrate' again" in err, err
    result = run_json(capsys, "--home", str(home), "migrate", "b")
    assert [p["name"] for p in result["migrated"]] == ["b"]
    assert result["busy"] == result["failed"] == [] and result["current"] == 0
    code, out, _ = run(capsys, "--home", str(home), "migrate")
    assert code == 0 and out == "migrated 0 profiles; 3 had nothing to convert\n"
    code, _, err = run(capsys, "--home", str(home), "migrate", "nope")
    assert code == 3 and "nope" in err


def test_import_of_a_file_that_is_not_there_is_a_file_error(
    capsys: pytest.CaptureFixture[str], store: ProfileStore, tmp_path: Path
) -> None:
    """Exit 1 (docs/cli.md's "a file error"), naming the path, before --create makes
    anything; not 2, which is for a bad archive or bad usage."""
    store.create("there")
    missing = tmp_path / "typo.tar.gz"
    for argv in (
        ("there", str(missing)),
        ("new", str(missing), "--create"),
        ("new", str(tmp_path), "--create"),
    ):
        code, out, err = run(capsys, "import", *argv)
        assert code == 1, err
        assert f"Cannot import {argv[1]}" in err and out == ""
    code, out, err = run(capsys, "--json", "import", "there", str(missing))
    assert code == 1 and json.loads(err.splitlines()[-1])["error"]["code"] == "OSError"
    assert [p.name for p in store.iter_profiles()] == ["there"]
