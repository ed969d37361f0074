"""Hostile profile directories: inspection stays bounded, quiet about secrets, and never hangs.

Every database and metadata file here is crafted the way a stranger's archive could carry it.
Cases that could hang or eat memory with a naive reader run in a child process with a timeout.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from profiles.state.inspection import detect_engine, read_browser_version, read_cookie_domains
from profiles.state.rules import Engine
from profiles.state.untrusted_sqlite import (
    SqliteLimits,
    UntrustedDatabaseError,
    read_text_column,
)

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Layout:
    engine: Engine
    db: str  # relative to the profile root
    table: str
    column: str


CHROMIUM = Layout("chromium", "Default/Network/Cookies", "cookies", "host_key")
FIREFOX = Layout("firefox", "cookies.sqlite", "moz_cookies", "host")
LAYOUTS = [pytest.param(CHROMIUM, id="chromium"), pytest.param(FIREFOX, id="firefox")]


def _root(tmp_path: Path, layout: Layout) -> tuple[Path, Path]:
    """A profile root that detect_engine recognises, and where its cookie database goes."""
    root = tmp_path / "profile"
    if layout.engine == "chromium":
        (root / "Default" / "Network").mkdir(parents=True)
        (root / "Local State").write_text("{}")
    else:
        root.mkdir(parents=True)
        (root / "prefs.js").write_text("")
    assert detect_engine(root) == layout.engine
    return root, root / layout.db


def _scratch(tmp_path: Path) -> Path:
    scratch = tmp_path / "home-tmp"
    scratch.mkdir(exist_ok=True)
    return scratch


def _create_table(conn: sqlite3.Connection, layout: Layout) -> None:
    if layout.engine == "chromium":
        conn.execute(
            "CREATE TABLE cookies(creation_utc INTEGER NOT NULL DEFAULT 0, host_key TEXT NOT NULL,"
            " name TEXT NOT NULL, value TEXT NOT NULL, encrypted_value BLOB NOT NULL DEFAULT '')"
        )
    else:
        conn.execute(
            "CREATE TABLE moz_cookies(id INTEGER PRIMARY KEY, originAttributes TEXT NOT NULL"
            " DEFAULT '', name TEXT, value TEXT, host TEXT, path TEXT)"
        )


def _insert(conn: sqlite3.Connection, layout: Layout, hosts: list[object]) -> None:
    conn.executemany(
        f"INSERT INTO {layout.table}({layout.column}, name, value) VALUES (?, 'n', 'secret-value')",
        [(h,) for h in hosts],
    )


def _db(path: Path, layout: Layout, hosts: list[object], *, wal: bool = False) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if wal:
            assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        _create_table(conn, layout)
        conn.execute("BEGIN")
        _insert(conn, layout, hosts)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _isolated(root: Path, engine: Engine, scratch: Path, timeout: float = 30) -> dict[str, object]:
    """read_cookie_domains in a child process: its result, wall time and peak RSS (VmHWM)."""
    script = textwrap.dedent(
        """
        import json, sys, time
        from pathlib import Path
        from profiles.state.inspection import read_cookie_domains
        root, engine, scratch = sys.argv[1:4]
        start = time.monotonic()
        domains = read_cookie_domains(Path(root), engine, scratch=Path(scratch))
        elapsed = time.monotonic() - start
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        print(json.dumps({"domains": domains, "elapsed": elapsed, "hwm_kib": hwm}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(root), engine, str(scratch)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _assert_no_leaks(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "secret-value" not in text
    assert str(tmp_path) not in text
    assert "\x1b" not in text and "\x07" not in text


# -- the baseline: a well-formed database reads -----------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_well_formed_database_reads(
    layout: Layout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, db = _root(tmp_path, layout)
    _db(db, layout, [".Example.COM", "example.com", "127.0.0.1", "xn--bcher-kva.example", "a_b.x"])
    scratch = _scratch(tmp_path)
    with caplog.at_level(logging.DEBUG):
        got = read_cookie_domains(root, layout.engine, scratch=scratch)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert got == [
        "127.0.0.1",
        "a_b.x",
        "example.com",
        "xn--bcher-kva.example",
    ]
    assert list(scratch.iterdir()) == []  # the copy is gone


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scratch_dir_is_the_only_place_written(
    layout: Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, db = _root(tmp_path, layout)
    _db(db, layout, ["example.com"])
    # The system temp dir is unusable: a reader that copies there fails this test.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-system-tmp"))
    assert read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path)) == ["example.com"]
    assert not (tmp_path / "no-such-system-tmp").exists()


def test_without_scratch_falls_back_to_a_private_temp_dir(tmp_path: Path) -> None:
    root, db = _root(tmp_path, CHROMIUM)
    _db(db, CHROMIUM, ["example.com"])
    assert read_cookie_domains(root, "chromium") == ["example.com"]


# -- databases that are code: views, recursive CTEs, lying schemas ----------------------------


ENDLESS_VIEW = (
    "CREATE VIEW {table} AS WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r)"
    " SELECT printf('%.*c', 1000, 'x') || i AS {column}, 'n' AS name FROM r"
)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_endless_recursive_view_is_bounded(
    layout: Layout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, db = _root(tmp_path, layout)
    conn = sqlite3.connect(db)
    conn.execute(ENDLESS_VIEW.format(table=layout.table, column=layout.column))
    conn.close()
    assert db.stat().st_size < 8192  # the 403-byte kind of archive
    scratch = _scratch(tmp_path)
    out = _isolated(root, layout.engine, scratch)
    assert out["domains"] == []
    # Refused before it runs, not stopped by the time limit.
    assert isinstance(out["elapsed"], float) and out["elapsed"] < 1.5
    assert isinstance(out["hwm_kib"], int) and out["hwm_kib"] < 300 * 1024
    assert list(scratch.iterdir()) == []
    with caplog.at_level(logging.WARNING):
        assert read_cookie_domains(root, layout.engine, scratch=scratch) == []
    assert any("not a plain table" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_view_over_a_cartesian_product_is_refused(layout: Layout, tmp_path: Path) -> None:
    root, db = _root(tmp_path, layout)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE t(h TEXT)")
    conn.execute(
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 1000)"
        " INSERT INTO t SELECT 'h' || i || '.example' FROM r"
    )
    conn.execute(
        f"CREATE VIEW {layout.table} AS SELECT a.h AS {layout.column} FROM t a, t b, t c, t d"
    )
    conn.close()
    out = _isolated(root, layout.engine, _scratch(tmp_path))
    assert out["domains"] == []
    assert isinstance(out["elapsed"], float) and out["elapsed"] < 1.5


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lying_schema_row_is_refused(
    layout: Layout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """sqlite_schema says 'table' while its SQL makes a view (writable_schema trick)."""
    root, db = _root(tmp_path, layout)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(ENDLESS_VIEW.format(table=layout.table, column=layout.column))
    name = "\x1b]0;owned\x07"
    conn.execute(f'CREATE VIEW "{name}" AS SELECT 1')
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute("UPDATE sqlite_master SET type = 'table', rootpage = 2 WHERE type = 'view'")
    conn.close()
    with caplog.at_level(logging.WARNING):
        out = _isolated(root, layout.engine, _scratch(tmp_path))
        assert out["domains"] == []
        assert read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path)) == []
    assert caplog.records and all(r.levelno == logging.WARNING for r in caplog.records)
    _assert_no_leaks(caplog, tmp_path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_generated_column_is_refused(
    layout: Layout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, db = _root(tmp_path, layout)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        f"CREATE TABLE {layout.table}(raw TEXT, name TEXT, value TEXT,"
        f" {layout.column} TEXT AS (lower(raw)))"
    )
    conn.execute(f"INSERT INTO {layout.table}(raw, name, value) VALUES ('Example.COM', 'n', 'v')")
    conn.close()
    with caplog.at_level(logging.WARNING):
        assert read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path)) == []
    assert any("not a plain column" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_virtual_table_is_refused(layout: Layout, tmp_path: Path) -> None:
    root, db = _root(tmp_path, layout)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(f"CREATE VIRTUAL TABLE {layout.table} USING fts5({layout.column}, name)")
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no fts5")
    conn.execute(f"INSERT INTO {layout.table} VALUES ('example.com', 'n')")
    conn.close()
    assert read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path)) == []


def test_schema_with_a_huge_number_of_views_is_bounded(tmp_path: Path) -> None:
    """Every statement parses the whole schema first; 300,000 views must not hang the import."""
    root, db = _root(tmp_path, CHROMIUM)
    _db(db, CHROMIUM, ["example.com"])
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute(
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 300000)"
        " INSERT INTO sqlite_master SELECT 'view', 'v' || i, 'v' || i, 0,"
        " 'CREATE VIEW v' || i || ' AS SELECT 1' FROM r"
    )
    conn.close()
    assert db.stat().st_size < 64 * MiB
    out = _isolated(root, "chromium", _scratch(tmp_path))
    assert isinstance(out["elapsed"], float) and out["elapsed"] < 10
    assert isinstance(out["hwm_kib"], int) and out["hwm_kib"] < 300 * 1024


# -- sizes: rows, values, files ----------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_huge_number_of_rows_hits_the_row_cap(layout: Layout, tmp_path: Path) -> None:
    root, db = _root(tmp_path, layout)
    _db(db, layout, [])
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        f"WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 300000)"
        f" INSERT INTO {layout.table}({layout.column}, name, value)"
        f" SELECT 'h' || (i % 50) || '.example', 'n', 'v' FROM r"
    )
    conn.close()
    start = time.monotonic()
    assert read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path)) == []
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fifty_megabyte_value_is_bounded(layout: Layout, tmp_path: Path) -> None:
    root, db = _root(tmp_path, layout)
    _db(db, layout, ["ok.example"])
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        f"INSERT INTO {layout.table}({layout.column}, name, value)"
        f" VALUES (printf('%.*c', {50 * MiB}, 'a') || '.example', 'n', 'v')"
    )
    conn.close()
    assert db.stat().st_size > 50 * MiB
    out = _isolated(root, layout.engine, _scratch(tmp_path))
    # One oversized value makes the whole database unknown; nothing long gets through.
    assert out["domains"] == []
    assert isinstance(out["hwm_kib"], int) and out["hwm_kib"] < 300 * 1024


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ten_gigabyte_file_is_refused_quickly(
    layout: Layout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, db = _root(tmp_path, layout)
    with db.open("wb") as f:
        f.truncate(10 * 1024 * MiB)  # sparse
    scratch = _scratch(tmp_path)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert read_cookie_domains(root, layout.engine, scratch=scratch) == []
    assert time.monotonic() - start < 2
    assert list(scratch.iterdir()) == []
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    _assert_no_leaks(caplog, tmp_path)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="zero-bytes"),
        pytest.param(b"not a database at all\n" * 100, id="text"),
        pytest.param(os.urandom(8192), id="random"),
        pytest.param(b"SQLite format 3\x00" + os.urandom(4096 - 16), id="bad-header"),
    ],
)
def test_not_a_database(
    layout: Layout, content: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, db = _root(tmp_path, layout)
    db.write_bytes(content)
    scratch = _scratch(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert read_cookie_domains(root, layout.engine, scratch=scratch) == []
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert list(scratch.iterdir()) == []
    _assert_no_leaks(caplog, tmp_path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_corrupted_database(layout: Layout, tmp_path: Path) -> None:
    root, db = _root(tmp_path, layout)
    _db(db, layout, [f"h{i}.example" for i in range(2000)])
    data = bytearray(db.read_bytes())
    for offset in range(4096, len(data), 97):  # scribble over every page but the first
        data[offset] = (data[offset] + 0x5A) % 256
    db.write_bytes(bytes(data))
    start = time.monotonic()
    result = read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path))
    assert time.monotonic() - start < 5
    assert all(len(d) <= 253 and d.isascii() and d.isprintable() for d in result)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_table_without_the_host_column(
    layout: Layout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, db = _root(tmp_path, layout)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"CREATE TABLE {layout.table}(name TEXT, value TEXT)")
    conn.execute(f"INSERT INTO {layout.table} VALUES ('n', 'secret-value')")
    conn.close()
    with caplog.at_level(logging.WARNING):
        assert read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path)) == []
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    _assert_no_leaks(caplog, tmp_path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_missing_table(layout: Layout, tmp_path: Path) -> None:
    root, db = _root(tmp_path, layout)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta(key TEXT, value TEXT)")
    conn.close()
    assert read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path)) == []


@pytest.mark.parametrize("layout", LAYOUTS)
def test_database_that_is_a_fifo_or_symlink(layout: Layout, tmp_path: Path) -> None:
    root, db = _root(tmp_path, layout)
    os.mkfifo(db)  # opening it for reading would block forever
    assert read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path)) == []
    db.unlink()
    elsewhere = tmp_path / "elsewhere.sqlite"
    _db(elsewhere, layout, ["outside.example"])
    db.symlink_to(elsewhere)
    assert read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path)) == []


# -- WAL and journals ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_wal_mode_database_reads_and_sidecars_are_ignored(layout: Layout, tmp_path: Path) -> None:
    root, db = _root(tmp_path, layout)
    _db(db, layout, ["checkpointed.example"], wal=True)
    assert db.read_bytes()[18:20] == b"\x02\x02"  # the header says WAL
    # A hostile, huge -wal and a garbage -journal beside it: input too, and ignored.
    with open(f"{db}-wal", "wb") as f:
        f.write(b"\x37\x7f\x06\x82" + os.urandom(4092))
        f.truncate(10 * 1024 * MiB)
    Path(f"{db}-journal").write_bytes(os.urandom(4096))
    scratch = _scratch(tmp_path)
    start = time.monotonic()
    assert read_cookie_domains(root, layout.engine, scratch=scratch) == ["checkpointed.example"]
    assert time.monotonic() - start < 2
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rows_only_in_an_uncheckpointed_wal_are_not_read(layout: Layout, tmp_path: Path) -> None:
    """By design only the main file is read: what a cleanly closed browser leaves."""
    root, db = _root(tmp_path, layout)
    _db(db, layout, ["main.example"], wal=True)
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        _insert(writer, layout, ["wal-only.example"])
        assert Path(f"{db}-wal").stat().st_size > 0
        assert read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path)) == [
            "main.example"
        ]
    finally:
        writer.close()
    assert read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path)) == [
        "main.example",
        "wal-only.example",
    ]


# -- what gets through: host names only --------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_only_host_names_get_through(
    layout: Layout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, db = _root(tmp_path, layout)
    hostile: list[object] = [
        "\x1b]0;owned\x07evil.example",
        "\x1b[2J",
        "evil.example\n",
        "exa mple.com",
        "bücher.example",
        "a" * 254,
        "a." * 127 + "b",  # 255 characters
        "-leading.example",
        "label-.example",
        "a" * 64 + ".example",
        "fe80::1%eth0",
        "..double.example",
        "",
        b"blob.example",  # a BLOB (an integer would become TEXT through the column affinity)
        None if layout.engine == "firefox" else "",
        b"\xff\xfe".decode("latin-1"),
    ]
    good = ["Good.Example", ".sub.good.example", "::1", "[2001:db8::1]", "10.0.0.1", "localhost"]
    conn = sqlite3.connect(db, isolation_level=None)
    _create_table(conn, layout)
    conn.close()
    conn = sqlite3.connect(db, isolation_level=None)
    _insert(conn, layout, [*hostile, *good])
    # Invalid UTF-8 stored as TEXT.
    conn.execute(
        f"INSERT INTO {layout.table}({layout.column}, name, value)"
        f" VALUES (CAST(x'ff6576696c2e6578616d706c65' AS TEXT), 'n', 'v')"
    )
    conn.close()
    with caplog.at_level(logging.WARNING):
        got = read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path))
    assert got == [
        "10.0.0.1",
        "2001:db8::1",
        "::1",
        "good.example",
        "localhost",
        "sub.good.example",
    ]
    assert any("dropped" in r.getMessage() for r in caplog.records)
    _assert_no_leaks(caplog, tmp_path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_number_of_domains_is_capped(
    layout: Layout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, db = _root(tmp_path, layout)
    _db(db, layout, [f"h{i:05d}.example" for i in range(1500)])
    with caplog.at_level(logging.WARNING):
        got = read_cookie_domains(root, layout.engine, scratch=_scratch(tmp_path))
    assert got == [f"h{i:05d}.example" for i in range(1000)]
    assert any("500" in r.getMessage() for r in caplog.records)


# -- the reader itself, with small limits -----------------------------------------------------


def _limits_db(tmp_path: Path, rows: int) -> Path:
    db = tmp_path / "t.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE t(c TEXT)")
    conn.execute(
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < ?)"
        " INSERT INTO t SELECT 'v' || i FROM r",
        (rows,),
    )
    conn.close()
    return db


def test_reader_enforces_each_limit(tmp_path: Path) -> None:
    db = _limits_db(tmp_path, 5000)
    scratch = _scratch(tmp_path)
    got = read_text_column(db, "t", "c", scratch=scratch)
    assert len(got.values) == 5000 and got.skipped == 0
    for limits, why in [
        (SqliteLimits(max_rows=4999), "rows"),
        (SqliteLimits(max_file_bytes=4096), "bytes"),
        (SqliteLimits(max_seconds=0.0), "time"),
        (SqliteLimits(max_value_bytes=3), "too big"),
    ]:
        with pytest.raises(UntrustedDatabaseError, match=why):
            read_text_column(db, "t", "c", scratch=scratch, limits=limits)
        assert list(scratch.iterdir()) == []
    short = read_text_column(db, "t", "c", scratch=scratch, limits=SqliteLimits(max_chars=3))
    assert sorted(short.values) == sorted(f"v{i}" for i in range(1, 100))
    assert short.skipped == 5000 - 99


def test_reader_rejects_bad_identifiers(tmp_path: Path) -> None:
    db = _limits_db(tmp_path, 1)
    with pytest.raises(ValueError):
        read_text_column(db, 't" UNION SELECT 1 --', "c", scratch=_scratch(tmp_path))


def test_reader_error_when_scratch_is_missing(tmp_path: Path) -> None:
    db = _limits_db(tmp_path, 1)
    with pytest.raises(UntrustedDatabaseError):
        read_text_column(db, "t", "c", scratch=tmp_path / "missing")


# -- browser versions --------------------------------------------------------------------------


def _version_root(tmp_path: Path, engine: Engine) -> tuple[Path, Path]:
    root = tmp_path / "v"
    root.mkdir()
    return root, root / ("Last Version" if engine == "chromium" else "compatibility.ini")


def _compat(last_version: str) -> str:
    return (
        "[Compatibility]\n"
        f"LastVersion={last_version}\n"
        "LastOSABI=Linux_x86_64-gcc3\n"
        "LastPlatformDir=/usr/lib/firefox-esr\n"
        "LastAppDir=/usr/lib/firefox-esr/browser\n"
    )


@pytest.mark.parametrize(
    ("engine", "content", "expected"),
    [
        ("chromium", "156.0.8078.108", "156.0.8078.108"),  # as Chromium writes it: no newline
        ("chromium", "156.0.8078.73\n", "156.0.8078.73"),
        ("firefox", _compat("153.7.0_20261103151912/20261103151912"), "153.7.0"),
        ("firefox", _compat("115.9.0esr_20240311000000/20240311000000"), "115.9.0esr"),
        ("firefox", _compat("154.0b3_20260101000000/20260101000000"), "154.0b3"),
        (
            "firefox",
            _compat("155.0a1_20260101000000/20260101000000").replace("\n", "\r\n"),
            "155.0a1",
        ),
    ],
)
def test_real_version_formats(engine: Engine, content: str, expected: str, tmp_path: Path) -> None:
    root, path = _version_root(tmp_path, engine)
    path.write_text(content, newline="")
    assert read_browser_version(root, engine) == expected


@pytest.mark.parametrize("engine", ["chromium", "firefox"])
@pytest.mark.parametrize(
    "bad",
    [
        "\x1b]0;owned\x07",
        "156.0\x1b[31m",
        "156.0.8078.73 (Official Build)",
        "1" * 40,
        "١٥٦.0",  # Arabic-Indic digits match a naive \\d
        "v156",
        "",
        "156..0",
    ],
)
def test_invalid_versions_are_refused(
    engine: Engine, bad: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, path = _version_root(tmp_path, engine)
    path.write_text(bad if engine == "chromium" else _compat(bad + "_20260101000000/1"))
    with caplog.at_level(logging.WARNING):
        assert read_browser_version(root, engine) is None
    _assert_no_leaks(caplog, tmp_path)


def test_huge_last_version_is_refused_quickly(tmp_path: Path) -> None:
    root, path = _version_root(tmp_path, "chromium")
    path.write_text("156.0.8078.73" + " " * (40 * MiB))
    start = time.monotonic()
    assert read_browser_version(root, "chromium") is None
    assert time.monotonic() - start < 1


def test_huge_compatibility_ini(tmp_path: Path) -> None:
    root, path = _version_root(tmp_path, "firefox")
    # The real line first, then 40 MiB of junk: the bounded prefix still has the answer.
    path.write_text(_compat("153.7.0_20261103151912/20261103151912") + "x" * (40 * MiB))
    start = time.monotonic()
    assert read_browser_version(root, "firefox") == "153.7.0"
    # The line is past the prefix, or cut by it: unknown, not a truncated version.
    path.write_text("#" * (64 * 1024 - 16) + "\nLastVersion=153.7.0_20261103151912/1\n")
    assert read_browser_version(root, "firefox") is None
    path.write_text("x" * (40 * MiB) + "\nLastVersion=153.7.0_20261103151912/1\n")
    assert read_browser_version(root, "firefox") is None
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("engine", ["chromium", "firefox"])
def test_version_file_that_is_not_a_regular_file(engine: Engine, tmp_path: Path) -> None:
    root, path = _version_root(tmp_path, engine)
    os.mkfifo(path)  # reading it would block forever
    assert read_browser_version(root, engine) is None
    path.unlink()
    path.mkdir()
    assert read_browser_version(root, engine) is None
    path.rmdir()
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert read_browser_version(root, engine) is None


def test_detect_engine_does_not_read_files(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    for name in ("Local State", "prefs.js"):
        with (root / name).open("wb") as f:
            f.truncate(10 * 1024 * MiB)  # sparse; reading it would take a long time
    start = time.monotonic()
    assert detect_engine(root) == "chromium"
    (root / "Local State").unlink()
    assert detect_engine(root) == "firefox"
    (root / "prefs.js").unlink()
    os.mkfifo(root / "prefs.js")
    assert detect_engine(root) is None
    assert time.monotonic() - start < 1
