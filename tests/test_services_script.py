"""``scripts/services.sh`` for real: the role it gives the tests is least-privilege, its
password random and private, and ``stop`` removes what ``start`` made.

The script runs against the PostgreSQL the tests use (the private server, or in CI the
cluster ``services.sh`` itself started, reached as its superuser through the socket) with
``PROFILES_SERVICES_POSTGRES`` (the cluster is neither started nor stopped),
``PROFILES_SERVICES_S3=off`` and its state in a temporary directory: the CI's own services
and another checkout's are left alone. Needs root (or sudo) to act as ``postgres``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from support.pg_service import PostgresService, fresh_database

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "services.sh"


def _script(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, **env},
    )


def _role(url: str, name: str) -> tuple[bool, bool, bool, bool] | None:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, "
            "pg_has_role(oid, 'pg_signal_backend', 'MEMBER') FROM pg_roles WHERE rolname = %s",
            (name,),
        ).fetchone()
    return None if row is None else (bool(row[0]), bool(row[1]), bool(row[2]), bool(row[3]))


def _databases_of(url: str, name: str) -> list[str]:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
            "WHERE r.rolname = %s",
            (name,),
        ).fetchall()
    return [r[0] for r in rows]


def test_services_sh_makes_a_least_privilege_role_and_stop_removes_it(
    postgres_service: PostgresService, tmp_path: Path
) -> None:
    # First what the script says it does: an old script would start the system's cluster.
    usage = _script("help", env={}).stdout
    assert "PROFILES_SERVICES_POSTGRES" in usage and "pg_signal_backend" in usage, usage
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        pytest.skip("services.sh acts as the postgres user: needs root or sudo")
    admin = postgres_service.url
    port = urlsplit(admin).port or 5432
    # The private server trusts postgres on 127.0.0.1; the system's cluster on its socket.
    where = f"127.0.0.1:{port}" if postgres_service.server is not None else f":{port}"
    env = {
        "PROFILES_SERVICES_DIR": str(tmp_path),
        "PROFILES_SERVICES_POSTGRES": where,
        "PROFILES_SERVICES_S3": "off",
    }

    passwords = []
    for _ in range(2):
        started = _script("start", env=env)
        assert started.returncode == 0, started.stderr + started.stdout
        env_file = tmp_path / ".services.env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        found = re.search(r"PROFILES_TEST_POSTGRES_URL=(\S+)", env_file.read_text())
        assert found is not None
        url = found.group(1)
        parts = urlsplit(url)
        role, password = parts.username or "", parts.password or ""
        assert re.fullmatch(r"profiles_[0-9a-f]{12}", role) and parts.path == f"/{role}"
        assert re.fullmatch(r"[0-9a-f]{48}", password)
        assert password not in started.stdout + started.stderr
        passwords.append(password)
        # Least privilege, and enough for the tests (tests/support/pg_service.py): databases of
        # its own, terminating sessions.
        assert _role(url, role) == (False, True, False, True)
        with fresh_database(url) as db, psycopg.connect(db, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            psycopg.connect(url, autocommit=True) as conn,
        ):
            conn.execute("CREATE ROLE escalate SUPERUSER")
        # A database the tests left behind goes with the role.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{role}_left"')

        stopped = _script("stop", env=env)
        assert stopped.returncode == 0, stopped.stderr + stopped.stdout
        assert not env_file.exists() and not (tmp_path / ".services" / "postgres-role").exists()
        assert _role(admin, role) is None
        assert _databases_of(admin, role) == []
    assert passwords[0] != passwords[1]
