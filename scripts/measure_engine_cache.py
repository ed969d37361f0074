"""Measure what seeding build-specific caches does to a cold browser start.

Bare Playwright, no library session: ``launch_persistent_context`` -> ``set_content`` ->
``evaluate`` -> ``close`` on

* ``warm``: a kept directory (the donor profile A itself, reused run after run);
* ``fresh``: a fresh unpack of A's committed state (``pack_dir`` + ``unpack_archive``),
  at a new path, like a short-lived container's first session;
* ``fresh+<candidate>``: the fresh unpack plus cache paths copied from ANOTHER profile B
  of the same browser build (and, for Firefox, ``+own``: A's own startupCache, the best case).

Every run starts its own Playwright driver. Runs are interleaved (every repeat runs each
variant once, in a rotating order). The table gives, per variant, the wall time from launch
to close (median, min..max, ratio to ``warm``), the CPU time of the driver and browser
processes (user + system, from ``RUSAGE_CHILDREN``; median, min..max, ratio to ``warm``),
and what copying the seed cost (bytes, milliseconds). On a shared machine the CPU time is the
figure to read: contention stretches wall time a lot and CPU time little. The end prints what
:class:`profiles.engine_cache.cache.EngineCache` itself costs to seed (copy with SHA-256 checks).
Run it on a quiet machine::

    .venv/bin/python scripts/measure_engine_cache.py --repeats 7
    .venv/bin/python scripts/measure_engine_cache.py --engines firefox --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from driver.browsers import find_browser, probe_version
from profiles.state.archive import pack_dir, unpack_archive
from profiles.state.rules import Engine

PAGE = """<!doctype html><title>t</title><style>body{font:16px sans-serif}</style>
<h1>hello</h1><p id=p></p>
<script>localStorage.setItem('k', 'v' + Date.now());
document.getElementById('p').textContent = [1,2,3].map(x => x * 2).join(',');</script>"""

# Candidate cache paths per engine (relative to the user-data-dir), measured one by one.
# Identity-bearing excluded paths are deliberately absent: Firefox cache2 (HTTP cache per
# site), thumbnails, datareporting (telemetry client id); they are never candidates.
_FIREFOX_CORE = (
    # everything but urlCache*.bin (names the profile's path) and webext.sc.lz4 (its
    # extensions' manifests)
    "startupCache/startupCache.8.little",
    "startupCache/scriptCache.bin",
    "startupCache/scriptCache-current.bin",
    "startupCache/scriptCache-child.bin",
    "startupCache/scriptCache-child-current.bin",
)
CANDIDATES: dict[Engine, dict[str, tuple[str, ...]]] = {
    "firefox": {
        "startupCache": ("startupCache",),
        "startupCache-core": _FIREFOX_CORE,  # what profiles.engine_cache.cache adopts
        "core+urlCache": (
            *_FIREFOX_CORE,
            "startupCache/urlCache.bin",
            "startupCache/urlCache-current.bin",
        ),
        "core+webext": (*_FIREFOX_CORE, "startupCache/webext.sc.lz4"),
        "scriptCache-only": (
            "startupCache/scriptCache.bin",
            "startupCache/scriptCache-current.bin",
            "startupCache/scriptCache-child.bin",
            "startupCache/scriptCache-child-current.bin",
        ),
        "startupCache.8.little-only": ("startupCache/startupCache.8.little",),
    },
    "chromium": {
        "gpu-caches": (
            "Default/GPUCache",
            "GPUPersistentCache",
            "Default/DawnWebGPUCache",
            "Default/DawnGraphiteCache",
            "GrShaderCache",
            "GraphiteDawnCache",
            "ShaderCache",
        ),
        "Code Cache": ("Default/Code Cache",),
        "components": (
            "component_crx_cache",
            "extensions_crx_cache",
            "Safe Browsing",
            "Variations",
            "OptimizationGuideModelsManifest",
            "segmentation_platform",
        ),
        "all-excluded": (
            "Default/GPUCache",
            "GPUPersistentCache",
            "Default/DawnWebGPUCache",
            "Default/DawnGraphiteCache",
            "GrShaderCache",
            "GraphiteDawnCache",
            "ShaderCache",
            "Default/Code Cache",
            "Default/Cache",
            "component_crx_cache",
            "extensions_crx_cache",
            "Safe Browsing",
            "Variations",
            "OptimizationGuideModelsManifest",
            "segmentation_platform",
        ),
    },
}


def _copy_paths(src: Path, dst: Path, paths: tuple[str, ...]) -> int:
    copied = 0
    for rel in paths:
        s, d = src / rel, dst / rel
        if s.is_symlink() or not s.exists():
            continue
        d.parent.mkdir(parents=True, exist_ok=True)
        if d.exists():
            shutil.rmtree(d) if d.is_dir() else d.unlink()
        if s.is_dir():
            shutil.copytree(s, d, symlinks=True)
            copied += sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        else:
            shutil.copy2(s, d)
            copied += d.stat().st_size
    return copied


def _session(engine: Engine, directory: Path, options: dict[str, Any]) -> tuple[float, float]:
    """One bare Playwright session on ``directory``: (wall seconds from launch to close, CPU
    seconds of the driver and browser processes, user + system). The CPU time is the steadier
    figure on a shared machine: contention stretches wall time much more than it adds work."""
    from playwright.sync_api import sync_playwright

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with sync_playwright() as p:
        started = time.perf_counter()
        ctx = getattr(p, engine).launch_persistent_context(str(directory), **options)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.set_content(PAGE)
        page.evaluate("document.getElementById('p').textContent")
        ctx.close()
        wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(
    engine: Engine, repeats: int, scratch: Path, only: list[str] | None = None
) -> list[dict[str, Any]]:
    browser = find_browser(engine)
    options: dict[str, Any] = {**browser.launch_options(), "headless": True}
    a, b = scratch / f"{engine}-A", scratch / f"{engine}-B"
    results: dict[str, list[tuple[float, float]]] = {}
    copy_cost: dict[str, list[tuple[int, float]]] = {}
    for donor in (a, b):  # two real profiles of the same build, each used twice
        for _ in range(2):
            _session(engine, donor, options)
    archive = io.BytesIO()
    pack_dir(a, archive, engine=engine)
    state = archive.getvalue()

    from profiles.engine_cache.cache import EngineCache

    cache = EngineCache(scratch / f"engine-cache-variant-{engine}")
    key = cache.build_key(
        engine, probe_version(browser) or "unknown", Path(browser.executable_path)
    )
    cache.refresh(engine, key, b)

    def library_seed(target: Path) -> int:
        cache.seed(engine, key, target)
        return sum(f.stat().st_size for f in target.glob("startupCache/*"))

    def fresh(label: str, seed_from: Path | None, paths: tuple[str, ...]) -> Callable[[], Any]:
        def run() -> tuple[float, float]:
            target = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{engine}-run-")) / "p"
            unpack_archive(io.BytesIO(state), target)
            if seed_from is not None:
                t = time.perf_counter()
                n = library_seed(target) if not paths else _copy_paths(seed_from, target, paths)
                copy_cost.setdefault(label, []).append((n, time.perf_counter() - t))
            try:
                return _session(engine, target, options)
            finally:
                shutil.rmtree(target.parent, ignore_errors=True)

        return run

    variants: dict[str, Callable[[], tuple[float, float]]] = {
        "warm": lambda: _session(engine, a, options),
        "fresh": fresh("fresh", None, ()),
    }
    if engine == "firefox":
        label = "fresh+own startupCache (A)"
        variants[label] = fresh(label, a, ("startupCache",))
    for name, paths in CANDIDATES[engine].items():
        label = f"fresh+{name} (B)"
        variants[label] = fresh(label, b, paths)
    if cache.has(engine, key):  # what the library does: EngineCache.seed from B's refresh
        label = "fresh+EngineCache.seed (B)"
        variants[label] = fresh(label, b, ())
    order = [v for v in variants if not only or v in ("warm", "fresh") or any(o in v for o in only)]
    for r in range(repeats):
        shift = r % len(order)
        for label in order[shift:] + order[:shift]:
            results.setdefault(label, []).append(variants[label]())
    warm_wall = statistics.median(w for w, _ in results["warm"])
    warm_cpu = statistics.median(c for _, c in results["warm"])
    rows = []
    for label in order:
        walls = [w for w, _ in results[label]]
        cpus = [c for _, c in results[label]]
        costs = copy_cost.get(label, [])
        rows.append(
            {
                "engine": engine,
                "variant": label,
                "median_s": statistics.median(walls),
                "min_s": min(walls),
                "max_s": max(walls),
                "ratio_to_warm": statistics.median(walls) / warm_wall,
                "cpu_median_s": statistics.median(cpus),
                "cpu_min_s": min(cpus),
                "cpu_max_s": max(cpus),
                "cpu_ratio_to_warm": statistics.median(cpus) / warm_cpu,
                "runs": len(walls),
                "seed_bytes": costs[0][0] if costs else 0,
                "seed_copy_ms": statistics.median(c[1] for c in costs) * 1000 if costs else 0.0,
            }
        )
    return rows


def measure_engine_cache_copy(engine: Engine, scratch: Path) -> dict[str, Any]:
    """The library's own seed (copy + hash check) from a refreshed cache."""
    from profiles.engine_cache.cache import CACHE_PATHS, EngineCache

    browser = find_browser(engine)
    version = probe_version(browser) or "unknown"
    cache = EngineCache(scratch / f"engine-cache-{engine}")
    key = cache.build_key(engine, version, Path(browser.executable_path))
    donor = scratch / f"{engine}-B"
    refreshed = cache.refresh(engine, key, donor)
    times = []
    for _ in range(5):
        target = Path(tempfile.mkdtemp(dir=scratch, prefix="seed-"))
        t = time.perf_counter()
        ok = cache.seed(engine, key, target)
        times.append(time.perf_counter() - t)
        shutil.rmtree(target)
        if not ok:
            break
    return {
        "engine": engine,
        "key": key,
        "refreshed": refreshed,
        "cache_paths": [f"{cp.path}/{{{','.join(cp.files)}}}" for cp in CACHE_PATHS[engine]],
        "seed_ms_median": statistics.median(times) * 1000,
        "seed_ms_max": max(times) * 1000,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| engine | variant | wall median | wall min..max | vs warm "
        "| CPU median | CPU min..max | CPU vs warm | seed copy | runs |"
    )
    out = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seed = (
            f"{r['seed_bytes'] / 1e6:.1f} MB / {r['seed_copy_ms']:.0f} ms"
            if r["seed_bytes"]
            else ""
        )
        out.append(
            f"| {r['engine']} | {r['variant']} | {r['median_s'] * 1000:.0f} ms "
            f"| {r['min_s'] * 1000:.0f}..{r['max_s'] * 1000:.0f} | {r['ratio_to_warm']:.2f} "
            f"| {r['cpu_median_s'] * 1000:.0f} ms "
            f"| {r['cpu_min_s'] * 1000:.0f}..{r['cpu_max_s'] * 1000:.0f} "
            f"| {r['cpu_ratio_to_warm']:.2f} | {seed} | {r['runs']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--engines", nargs="+", default=["firefox", "chromium"])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only variants containing these words"
    )
    parser.add_argument(
        "--no-library", action="store_true", help="skip timing EngineCache.seed itself"
    )
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    seeds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="measure-engine-cache-") as tmp:
        scratch = Path(tmp)
        for engine in args.engines:
            print(f"measuring {engine} ({args.repeats} interleaved repeats)...", file=sys.stderr)
            rows += measure(engine, args.repeats, scratch, args.only)
            if not args.no_library:
                seeds.append(measure_engine_cache_copy(engine, scratch))
    print(f"load average at the end: {tuple(round(x, 1) for x in os.getloadavg())}")
    print(table(rows))
    print()
    for s in seeds:
        print(
            f"{s['engine']}: EngineCache paths {s['cache_paths']}, key {s['key']}, "
            f"refreshed={s['refreshed']}, seed {s['seed_ms_median']:.0f} ms "
            f"(max {s['seed_ms_max']:.0f} ms)"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "seeds": seeds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
