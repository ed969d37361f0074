"""Run one bounded query on a SQLite file that a stranger wrote.

A SQLite database is a program as much as data: its schema can define views over endless
recursive CTEs, generated columns, virtual tables, triggers, and it can be corrupt on purpose.
:func:`read_text_column` reads the text values of one column of one real table and nothing
else, under limits on size, rows, value length and wall time. Whatever goes wrong comes out as
:class:`UntrustedDatabaseError`, whose message is safe to log (no values, no absolute paths,
control characters escaped).

The protections, in order:

* **Copy, capped.** Only the main database file is copied, into a fresh private directory under
  ``scratch`` (the store passes a directory inside its home), opened with ``O_NOFOLLOW`` and
  ``O_NONBLOCK`` (a symlink, FIFO or device is refused, nothing blocks) and refused if it is
  not a regular file or larger than ``max_file_bytes`` (checked by ``fstat`` and again while
  copying, so a growing file is refused too). The directory is removed afterwards, also on
  error.
* **Sidecars ignored, on purpose.** ``-wal``, ``-shm`` and ``-journal`` files are input too: a
  hostile ``-wal`` is as much attacker data as the database, and a hot journal would need a
  write to roll back. They are never copied, and the copy is opened with ``immutable=1``, so
  SQLite does not look for them either. The price: rows that live only in an un-checkpointed
  ``-wal`` (a browser killed mid-session) are not seen. A browser that closed cleanly leaves
  everything in the main file (Firefox checkpoints and removes its ``-wal`` on exit; Chromium's
  rollback journal is empty after each commit), which is when the store reads it.
* **Read-only connection.** ``file:…?mode=ro&immutable=1`` (no locks, no writes, no sidecars),
  ``PRAGMA query_only=ON``, ``PRAGMA trusted_schema=OFF`` (no non-innocuous functions or
  virtual tables reachable from the schema), ``PRAGMA cell_size_check=ON`` (extra corruption
  checks), ``mmap_size=0``, a 2 MiB page cache, ``temp_store=MEMORY`` (no temp files outside
  the store's home). Python 3.12+ also gets ``SQLITE_DBCONFIG_DEFENSIVE`` and views, triggers
  and extension loading switched off through ``Connection.setconfig``. On Python 3.11
  ``setconfig`` does not exist; the defensive flag only guards against writes and dangerous
  PRAGMAs, which the read-only immutable connection, ``query_only`` and the authorizer below
  already rule out (the only SQL ever run is this module's own).
* **SQLite limits** (``Connection.setlimit``): any string or blob SQLite materialises is at
  most ``max_value_bytes`` (1 MiB; a larger value fails the whole read, it is not skipped),
  SQL text 100,000 bytes, expression depth 100, 8 function arguments, no attached databases,
  4 compound SELECT terms, 8 variables, trigger depth 1, no worker threads.
* **An authorizer** that allows exactly: a top-level SELECT, reading ``type``/``name``/
  ``rootpage`` of ``sqlite_master``, reading the one wanted column of the one wanted table (only
  in ``main`` and never from inside a view or trigger), the functions ``typeof`` and
  ``substr``, and ``PRAGMA table_xinfo``. Anything else (a view's body, a recursive CTE, other
  tables, other functions) makes the statement fail to prepare, before it runs.
* **Schema checks.** The table must have exactly one ``sqlite_master`` row, of type ``table``
  with a real root page (not a view, not a virtual table; SQLite itself refuses a row whose
  type lies about its SQL), and ``PRAGMA table_xinfo`` must list the column as an ordinary
  column (not generated, not hidden).
* **Query bounds.** The query is ``SELECT typeof(col), substr(col, 1, max_chars + 1)``: Python
  never receives more than ``max_chars + 1`` characters of a value. Rows are fetched in batches
  of 256 and counted; more than ``max_rows`` (100,000) rows fail the read. A progress handler
  (every 1,000 virtual-machine steps, including the schema parse that precedes every first
  statement) aborts everything once ``max_seconds`` (2 s) have passed since the connection
  opened. Non-text values, invalid UTF-8 and values longer than ``max_chars`` are skipped and
  counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ColumnValues", "SqliteLimits", "UntrustedDatabaseError", "read_text_column"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}", re.ASCII)
_BATCH = 256
_PROGRESS_STEPS = 1000


@dataclass(frozen=True)
class SqliteLimits:
    """Bounds for one read of an untrusted database."""

    max_file_bytes: int = 64 * MiB  # bigger files are refused before any copying
    max_rows: int = 100_000  # more rows: the read fails
    max_seconds: float = 2.0  # wall time from open to last row, schema parse included
    max_value_bytes: int = 1 * MiB  # SQLITE_LIMIT_LENGTH: a larger value fails the read
    max_chars: int = 1024  # longer text values are skipped (Python sees at most this + 1)


@dataclass(frozen=True)
class ColumnValues:
    """The distinct text values read, in first-seen order, and how many rows were skipped."""

    values: list[str] = field(default_factory=list)
    skipped: int = 0


class UntrustedDatabaseError(Exception):
    """The database could not be read within the limits. The message is safe to log."""


def _safe_text(text: str, limit: int = 200) -> str:
    """``text`` with control and other non-printable characters escaped, cut to ``limit``."""
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)
    return out if len(out) <= limit else out[:limit] + "..."


def read_text_column(
    db: Path,
    table: str,
    column: str,
    *,
    scratch: Path | None = None,
    limits: SqliteLimits = SqliteLimits(),  # frozen, so one shared default is fine
) -> ColumnValues:
    """The distinct text values of ``table.column`` in the untrusted SQLite file ``db``.

    ``table`` and ``column`` are the caller's (trusted) identifiers; ``ValueError`` if they are
    not plain identifiers. ``scratch`` is where the private copy goes; the store passes a
    directory inside its home. Without it a private directory under the system temp dir is
    used. Everything that goes wrong with the file raises :class:`UntrustedDatabaseError`.
    """
    for name in (table, column):
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain SQL identifier: {name!r}")
    try:
        workdir = Path(tempfile.mkdtemp(prefix="untrusted-sqlite-", dir=scratch))
    except OSError as exc:
        raise UntrustedDatabaseError(f"cannot make a scratch directory: {exc.strerror}") from None
    try:
        copy = workdir / "db.sqlite"
        _copy_capped(Path(db), copy, limits.max_file_bytes)
        return _query(copy, table, column, limits)
    except UntrustedDatabaseError:
        raise
    except sqlite3.Error as exc:
        raise UntrustedDatabaseError(_sqlite_reason(exc, limits)) from None
    except OSError as exc:
        raise UntrustedDatabaseError(f"cannot copy the database: {exc.strerror}") from None
    except Exception as exc:  # never anything else from hostile input
        raise UntrustedDatabaseError(f"unexpected {type(exc).__name__}") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if workdir.exists():
            log.warning("could not remove the scratch copy %s", workdir.name)


def _sqlite_reason(exc: sqlite3.Error, limits: SqliteLimits) -> str:
    message = str(exc)
    if message == "interrupted":
        return f"time limit of {limits.max_seconds:g} s exceeded"
    if message == "string or blob too big":
        return f"a value is too big (over {limits.max_value_bytes} bytes)"
    if message == "not authorized":
        return "the query touches more than one table's column (a view or trigger?)"
    return f"SQLite error: {_safe_text(message)}"


def _copy_capped(src: Path, dst: Path, cap: int) -> None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(src, flags)
    except OSError as exc:
        reason = "a symlink" if os.path.islink(src) else exc.strerror
        raise UntrustedDatabaseError(f"cannot open the database: {reason}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedDatabaseError("the database is not a regular file")
        if info.st_size > cap:
            raise UntrustedDatabaseError(f"the database is larger than {cap} bytes")
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            copied = 0
            while chunk := os.read(fd, MiB):
                copied += len(chunk)
                if copied > cap:
                    raise UntrustedDatabaseError(f"the database is larger than {cap} bytes")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
        finally:
            os.close(out)
    finally:
        os.close(fd)


_LIMITS = {
    "SQLITE_LIMIT_SQL_LENGTH": 100_000,
    "SQLITE_LIMIT_COLUMN": 2000,
    "SQLITE_LIMIT_EXPR_DEPTH": 100,
    "SQLITE_LIMIT_COMPOUND_SELECT": 4,
    "SQLITE_LIMIT_VDBE_OP": 100_000,
    "SQLITE_LIMIT_FUNCTION_ARG": 8,
    "SQLITE_LIMIT_ATTACHED": 0,
    "SQLITE_LIMIT_LIKE_PATTERN_LENGTH": 100,
    "SQLITE_LIMIT_VARIABLE_NUMBER": 8,
    "SQLITE_LIMIT_TRIGGER_DEPTH": 1,
    "SQLITE_LIMIT_WORKER_THREADS": 0,
}

# Python 3.12+: Connection.setconfig(op, enable). Absent on 3.11 (see the module docstring).
_DBCONFIG = {
    "SQLITE_DBCONFIG_DEFENSIVE": True,
    "SQLITE_DBCONFIG_TRUSTED_SCHEMA": False,
    "SQLITE_DBCONFIG_ENABLE_VIEW": False,
    "SQLITE_DBCONFIG_ENABLE_TRIGGER": False,
    "SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION": False,
}

_PRAGMAS = (
    "PRAGMA trusted_schema=OFF",
    "PRAGMA query_only=ON",
    "PRAGMA cell_size_check=ON",
    "PRAGMA mmap_size=0",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-2048",
)


@contextlib.contextmanager
def _connect(copy: Path, limits: SqliteLimits) -> Iterator[sqlite3.Connection]:
    deadline = time.monotonic() + limits.max_seconds

    def past_deadline() -> bool:
        return time.monotonic() > deadline

    conn = sqlite3.connect(
        f"{copy.as_uri()}?mode=ro&immutable=1",
        uri=True,
        isolation_level=None,
        check_same_thread=True,
        cached_statements=0,
    )
    try:
        conn.set_progress_handler(past_deadline, _PROGRESS_STEPS)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.max_value_bytes)
        for name, value in _LIMITS.items():
            category = getattr(sqlite3, name, None)
            if isinstance(category, int):
                conn.setlimit(category, value)
        setconfig: Callable[[int, bool], bool] | None = getattr(conn, "setconfig", None)
        if setconfig is not None:
            for name, enable in _DBCONFIG.items():
                op = getattr(sqlite3, name, None)
                if isinstance(op, int):
                    # An op this libsqlite does not know: the pragmas below still apply.
                    with contextlib.suppress(sqlite3.Error):
                        setconfig(op, enable)
        conn.text_factory = bytes  # decode ourselves: invalid UTF-8 skips a value, not the read
        for pragma in _PRAGMAS:
            conn.execute(pragma).close()
        if past_deadline():
            raise sqlite3.OperationalError("interrupted")
        yield conn
    finally:
        conn.close()


def _authorizer(table: str, column: str) -> Callable[..., int]:
    readable = {
        ("sqlite_master", "type"),
        ("sqlite_master", "name"),
        ("sqlite_master", "rootpage"),
        (table.lower(), column.lower()),
    }

    def authorize(
        action: int, arg1: str | None, arg2: str | None, dbname: str | None, inner: str | None
    ) -> int:
        if inner is not None:  # anything inside a view or trigger
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_SELECT:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ and dbname == "main" and arg1 and arg2 is not None:
            ok = (arg1.lower(), arg2.lower()) in readable
            return sqlite3.SQLITE_OK if ok else sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION and arg2 in ("typeof", "substr"):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and arg1 == "table_xinfo":
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    return authorize


def _query(copy: Path, table: str, column: str, limits: SqliteLimits) -> ColumnValues:
    with _connect(copy, limits) as conn:
        conn.set_authorizer(_authorizer(table, column))
        rows = conn.execute(
            "SELECT type, rootpage FROM main.sqlite_master WHERE name = ? COLLATE NOCASE",
            (table,),
        ).fetchmany(2)
        if not rows:
            raise UntrustedDatabaseError(f"no table {table}")
        if len(rows) > 1 or rows[0][0] != b"table" or not _is_root_page(rows[0][1]):
            raise UntrustedDatabaseError(f"{table} is not a plain table")
        # (cid, name, type, notnull, dflt_value, pk, hidden); hidden 2/3: generated columns.
        info = conn.execute(f'PRAGMA main.table_xinfo("{table}")').fetchmany(2001)
        kinds = [row[6] for row in info if isinstance(row[1], bytes) and _same(row[1], column)]
        if not kinds:
            raise UntrustedDatabaseError(f"{table} has no column {column}")
        if kinds != [0]:
            raise UntrustedDatabaseError(f"{table}.{column} is not a plain column")
        cursor = conn.execute(
            f'SELECT typeof("{column}"), substr("{column}", 1, ?) FROM main."{table}"',
            (limits.max_chars + 1,),
        )
        seen: dict[str, None] = {}
        count = skipped = 0
        while batch := cursor.fetchmany(_BATCH):
            count += len(batch)
            if count > limits.max_rows:
                raise UntrustedDatabaseError(f"more than {limits.max_rows} rows")
            for kind, value in batch:
                text = _text(kind, value, limits.max_chars)
                if text is None:
                    skipped += kind != b"null"
                else:
                    seen.setdefault(text, None)
        cursor.close()
        return ColumnValues(values=list(seen), skipped=skipped)


def _is_root_page(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 2


def _same(raw: bytes, name: str) -> bool:
    return raw.lower() == name.lower().encode("ascii")


def _text(kind: object, value: object, max_chars: int) -> str | None:
    if kind != b"text" or not isinstance(value, bytes):
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if len(text) <= max_chars else None
