"""A smoke run of scripts/bench.py with tiny sizes: every section reports numbers; and the
tables of docs/benchmark.md rendered by scripts/bench_tables.py from a small JSON fixture
(no browser, no benchmark run).

Benchmarks are not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from support.s3_service import S3Endpoint

from conftest import require_engine

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench.py"
FIXTURE = Path(__file__).resolve().parent / "data" / "bench-small.json"
DOC = ROOT / "docs" / "benchmark.md"
SECTIONS = (
    "Session overhead",
    "Teardown",
    "Lock hand-off",
    "Catalog scale",
    "Shared backend",
    "Lease hand-off",
    "Catalog scale on PostgreSQL",
    "Incremental state",
    "The HTTP service",
)


def _load_bench_tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_tables", ROOT / "scripts" / "bench_tables.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_tables = _load_bench_tables()


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
    for heading in SECTIONS[:7]:
        assert heading in report
    data = json.loads(out.read_text())
    # The JSON holds every figure printed: the generator renders the same tables from it.
    assert bench_tables.report(data).strip() in report
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


# ---------------------------------------------------------------- tables from the JSON


def _tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of ``text``: rows of cells (a ``\\|`` stays inside its cell)."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_the_tables_render_every_section_of_the_json() -> None:
    results = json.loads(FIXTURE.read_text("utf-8"))
    text = bench_tables.report(results)
    for heading in SECTIONS:
        assert heading in text, heading
    assert "2 x Test CPU, 4.0 GiB, Linux-test, Python 3.11.7, Playwright 1.64.1" in text
    assert "Run 2026-05-09 22:00 UTC: `scripts/bench.py --quick --engines chromium`" in text
    for figure in ("785 ms", "1.04", "807 ms (1.03)", "1.70 MB", "0.27 / 0.36 ms", "1.036"):
        assert figure in text, figure
    assert (
        "| 669 ms | 761 ms | 1.14 | 100.00 MB | 212 MB/s | 407 MB/s | 91.9 MB | 788 req/s |" in text
    )
    for table in _tables(text):  # every row as wide as its header: no cell split by a "|"
        assert len({len(row) for row in table}) == 1, table
    teardown = next(t for t in _tables(text) if t[0][:2] == ["engine", "what"])
    assert ["chromium", "tar \\| zstd -3", "14 ms", "2.04 MB", "6.52 MB"] in teardown
    assert ["chromium", "tar \\| gzip -6", "n/a", "n/a", "6.52 MB"] in teardown


def test_the_tables_leave_out_sections_not_run() -> None:
    results = json.loads(FIXTURE.read_text("utf-8"))
    only = {"machine": results["machine"], "locks": results["locks"]}
    text = bench_tables.report(only)
    assert "Lock hand-off" in text and "Session overhead" not in text and "Run " not in text


def test_the_generator_replaces_only_the_block(tmp_path: Path) -> None:
    doc = tmp_path / "benchmark.md"
    begin, end = bench_tables.BEGIN, bench_tables.END
    before = f"# Benchmark\n\nby hand\n\n{begin}\n\nold tables\n\n{end}\n\nafter\n"
    doc.write_text(before, "utf-8")
    assert bench_tables.main([str(FIXTURE), "--doc", str(doc)]) == 0
    after = doc.read_text("utf-8")
    assert after.startswith("# Benchmark\n\nby hand\n\n" + bench_tables.BEGIN)
    assert after.endswith(bench_tables.END + "\n\nafter\n")
    assert "old tables" not in after and "### 7. The HTTP service on loopback" in after
    assert bench_tables.main([str(FIXTURE), "--doc", str(doc)]) == 0
    assert doc.read_text("utf-8") == after  # a second run changes nothing
    with pytest.raises(ValueError, match="no block"):
        bench_tables.replace_block("# no markers\n", "x")


def test_docs_benchmark_has_the_block_the_generator_replaces() -> None:
    text = DOC.read_text("utf-8")
    assert text.count(bench_tables.BEGIN) == 1 and text.count(bench_tables.END) == 1
    assert text.index(bench_tables.BEGIN) < text.index(bench_tables.END)
    assert "scripts/bench_tables.py" in text.split(bench_tables.BEGIN)[0]  # says how
