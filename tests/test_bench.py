"""A smoke run of scripts/bench.py with tiny sizes: every section reports numbers.

Benchmarks are not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_engine

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


@pytest.mark.browser
def test_bench_runs_every_section(tmp_path: Path) -> None:
    for engine in ("chromium", "firefox"):
        require_engine(engine)  # type: ignore[arg-type]
    out = tmp_path / "bench.json"
    argv = ["--quick", "--repeats", "1", "--profiles", "120", "--writers", "2", "--json", str(out)]
    run = subprocess.run(
        [sys.executable, str(BENCH), *argv], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    report = run.stdout
    for heading in ("Session overhead", "Teardown", "Lock hand-off", "Catalog scale"):
        assert heading in report
    data = json.loads(out.read_text())
    assert [s["engine"] for s in data["sessions"]] == ["chromium", "firefox"]
    for section in data["sessions"]:
        assert all(math.isfinite(v) and v > 0 for v in section["median_s"].values())
    for section in data["teardown"]:
        assert set(section["pack"]) == {"zstd", "zstd (no excludes)", "gzip", "gzip (no excludes)"}
        assert section["pack"]["zstd"]["bytes"] < section["pack"]["zstd (no excludes)"]["bytes"]
    assert data["locks"]["overlaps"] == 0 and data["locks"]["acquisitions"] == 6
    assert data["catalog"]["seen"] == 120
