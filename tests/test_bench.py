"""A smoke run of scripts/bench.py with tiny sizes: every section reports numbers.

Benchmarks are not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from support.s3_service import S3Endpoint

from conftest import require_engine

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


def test_bench_runs_every_section(
    tmp_path: Path, postgres_url: str, s3_endpoint: S3Endpoint
) -> None:
    require_engine("chromium")
    out = tmp_path / "bench.json"
    # One engine: a second runs the same sections again (the engines' own behaviour is the
    # other tests' business), and Firefox's sections took two thirds of the run.
    argv = ["--quick", "--repeats", "1", "--profiles", "120", "--writers", "2", "--json", str(out)]
    argv += ["--engines", "chromium"]
    env = {
        **os.environ,
        **s3_endpoint.env(),
        "PROFILES_TEST_POSTGRES_URL": postgres_url,
        "PROFILES_TEST_S3_ENDPOINT": s3_endpoint.endpoint_url,
    }
    run = subprocess.run(
        [sys.executable, str(BENCH), *argv], capture_output=True, text=True, check=False, env=env
    )
    assert run.returncode == 0, run.stderr
    report = run.stdout
    for heading in (
        "Session overhead",
        "Teardown",
        "Lock hand-off",
        "Catalog scale",
        "Shared backend",
        "Lease hand-off",
        "Catalog scale on PostgreSQL",
    ):
        assert heading in report
    data = json.loads(out.read_text())
    assert [s["engine"] for s in data["sessions"]] == ["chromium"]
    for section in data["sessions"]:
        assert all(math.isfinite(v) and v > 0 for v in section["median_s"].values())
    for section in data["teardown"]:
        assert set(section["pack"]) == {"zstd", "zstd (no excludes)", "gzip", "gzip (no excludes)"}
        assert section["pack"]["zstd"]["bytes"] < section["pack"]["zstd (no excludes)"]["bytes"]
    assert data["locks"]["overlaps"] == 0 and data["locks"]["acquisitions"] == 6
    assert data["catalog"]["seen"] == 120
    for section in data["shared_sessions"]:
        assert all(math.isfinite(v) and v > 0 for v in section["median_s"].values())
    assert data["shared_handoff"]["overlaps"] == 0 and data["shared_handoff"]["handoffs"] >= 1
    assert data["shared_catalog"]["seen"] >= 120  # the other sections' profiles too
