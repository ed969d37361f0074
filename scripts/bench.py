"""Benchmark: what the library costs next to bare Playwright, measured in one run.

    python scripts/bench.py [--quick] [--json FILE] [--engines chromium,firefox]
                            [--repeats N] [--profiles N] [--writers N] [--only SECTIONS]
                            [--no-shared] [--big]

Sections (each prints a markdown table; ``--json FILE`` also writes every figure printed,
from which ``scripts/bench_tables.py FILE`` rewrites the tables of docs/benchmark.md):

1. Session overhead: ``with Session(...) as page: page.goto(url)`` against the same work in
   bare Playwright (``launch_persistent_context`` on an unpacked directory), warm (working
   copy reused) and cold (unpacked from the committed archive), medians of interleaved runs.
2. Teardown: pack + commit time and archive size of a realistic profile, gzip and zstd,
   with and without the engine-aware excludes, next to ``tar | gzip`` and ``tar | zstd``.
3. Lock hand-off: writers queueing for one profile; release-to-acquire gaps, overlaps.
4. Catalog scale: create, get by name, and walking ``list`` pages with many profiles.
5. The shared backend (PostgreSQL + S3 on loopback) next to the embedded store: session round
   trips warm and cold, commit time, lease hand-off between worker processes, and catalog
   scale on PostgreSQL. Uses ``$PROFILES_CATALOG_URL`` / ``$PROFILES_BLOBS_URL`` when set,
   else starts the servers with ``scripts/services.sh`` (and stops them); ``--no-shared``
   skips it.
6. Incremental state: ``commit_state`` of Chromium-shaped profiles (1, 10, 100 MB; 400 MB
   with ``--big``) after a one-cookie change and after a 10 % change, chunked next to whole
   archives (``chunked=False``, what every commit cost before), on the embedded store and on
   the shared backend: commit time, bytes stored, storage after 10 commits, and a cold
   checkout next to unpacking the whole archive.
7. The HTTP service (``profiles serve`` on loopback): a session through the HTTP client next
   to the embedded store (warm), upload and download throughput of a 100 MB archive with the
   server's peak memory, and requests per second of ``GET /v1/profiles`` on one worker.

Everything runs in a temporary store home and against a local HTTP server.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import itertools
import json
import logging
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tables import report

from driver import Session
from driver.browsers import find_browser, probe_version
from profiles import ProfileStore, get_archetype
from profiles.state.archive import pack_dir
from profiles.state.rules import Engine
from profiles.workspace.locks import ProfileLock

PAGE = b"""<!doctype html><title>bench</title><body>bench<script>
localStorage.setItem("visits", String(Number(localStorage.getItem("visits") || 0) + 1));
const open = indexedDB.open("bench", 1);
open.onupgradeneeded = () => open.result.createObjectStore("kv");
open.onsuccess = () => { const tx = open.result.transaction("kv", "readwrite");
  tx.objectStore("kv").put("x".repeat(100000), "blob"); };
Promise.all([0, 1, 2, 3].map((i) => fetch("/asset-" + i + ".bin").then((r) => r.arrayBuffer())))
  .then(() => { document.title = "loaded"; });
</script></body>"""
ASSET = os.urandom(1024 * 1024)  # 4 of these make "a few MB of cache"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = ASSET if self.path.startswith("/asset-") else PAGE
        self.send_response(200)
        self.send_header(
            "Content-Type", "application/octet-stream" if body is ASSET else "text/html"
        )
        self.send_header("Cache-Control", "max-age=86400")
        if body is PAGE:
            self.send_header("Set-Cookie", "bench=1; Max-Age=86400; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser closing a connection mid-response is normal, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def local_server() -> Iterator[str]:
    server = _QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def ratio_interval(
    runs: list[float], bare: list[float], resamples: int = 2000
) -> tuple[float, float]:
    """A 95 % bootstrap interval of median(runs) / median(bare): when it lies under a
    target, the runs tell the difference apart from the noise."""
    rng = random.Random(0)
    ratios = sorted(
        statistics.median(rng.choices(runs, k=len(runs)))
        / statistics.median(rng.choices(bare, k=len(bare)))
        for _ in range(resamples)
    )
    return ratios[int(resamples * 0.025)], ratios[int(resamples * 0.975) - 1]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# ---------------------------------------------------------------------------- 1. sessions


def visit(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_function("document.title === 'loaded'")


def bench_sessions(engine: Engine, repeats: int, url: str, home: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    store = ProfileStore(home / f"sessions-{engine}")
    archetype = f"desktop-{engine}"
    with Session(profile="bench", store=store, archetype=archetype) as page:  # fill it once
        visit(page, url)
    profile = store.get("bench")
    bare_dir = home / f"bare-{engine}"
    shutil.copytree(store.working_copies.path(profile.id), bare_dir, symlinks=True)
    browser = find_browser(engine)
    viewport = get_archetype(archetype).viewport.model_dump()
    options: dict[str, Any] = {**browser.launch_options(), "headless": True, "viewport": viewport}

    bare_phases: dict[str, list[float]] = {}

    def lap(phases: dict[str, list[float]], name: str, started: float) -> float:
        now = time.perf_counter()
        phases.setdefault(name, []).append(now - started)
        return now

    def bare() -> None:
        t = time.perf_counter()
        manager = sync_playwright()
        p = manager.start()
        t = lap(bare_phases, "playwright start", t)
        ctx = getattr(p, engine).launch_persistent_context(str(bare_dir), **options)
        t = lap(bare_phases, "browser launch", t)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        t = lap(bare_phases, "first page", t)
        visit(page, url)
        t = lap(bare_phases, "work", t)
        ctx.close()
        t = lap(bare_phases, "close", t)
        p.stop()
        lap(bare_phases, "playwright stop", t)

    def ours() -> None:
        with Session(profile="bench", store=store) as page:
            visit(page, url)

    def readonly() -> None:
        with Session(profile="bench", store=store, readonly=True) as page:
            visit(page, url)

    # A cold session finds no working copy (a fresh container finds no engine cache
    # either): the removal happens before the clock starts, as it is not part of a session.
    def forget_working_copy() -> None:
        store.working_copies.remove(profile.id)

    def forget_engine_cache() -> None:
        store.working_copies.remove(profile.id)
        shutil.rmtree(store.home / "engine-cache", ignore_errors=True)

    phases: dict[str, list[float]] = {"prepare": [], "commit": []}
    from playwright.sync_api import BrowserContext, BrowserType

    from driver.lifecycle import SessionLifecycle
    from driver.session import _ThreadPlaywright

    original_prepare, original_commit = SessionLifecycle.prepare, ProfileStore.commit_state
    ours_phases: dict[str, list[float]] = {}
    wrapped: list[tuple[Any, str, Any]] = []

    def instrument(owner: Any, attr: str, phase: str) -> None:
        original = getattr(owner, attr)

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                ours_phases.setdefault(phase, []).append(time.perf_counter() - start)

        wrapped.append((owner, attr, original))
        setattr(owner, attr, timed_call)

    def timed_prepare(self: SessionLifecycle) -> Any:
        start = time.perf_counter()
        try:
            return original_prepare(self)
        finally:
            phases["prepare"].append(time.perf_counter() - start)

    def timed_commit(self: ProfileStore, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original_commit(self, *args, **kwargs)
        finally:
            phases["commit"].append(time.perf_counter() - start)

    runs: dict[str, list[float]] = {
        "bare": [],
        "warm": [],
        "cold": [],
        "cold_no_cache": [],
        "readonly": [],
    }
    bare()  # warm the page cache for everyone
    bare_phases.clear()
    SessionLifecycle.prepare = timed_prepare  # type: ignore[method-assign]
    ProfileStore.commit_state = timed_commit  # type: ignore[method-assign]
    try:
        for _ in range(repeats):
            runs["bare"].append(timed(bare))
            phases["prepare"].clear()
            for owner, attr, phase in (
                (_ThreadPlaywright, "acquire", "playwright start"),
                (BrowserType, "launch_persistent_context", "browser launch"),
                (BrowserContext, "close", "close"),
                (BrowserContext, "cookies", "session cookies: save"),
                (BrowserContext, "add_cookies", "session cookies: restore"),
                (SessionLifecycle, "started", "record use"),
                (_ThreadPlaywright, "release", "playwright stop"),
            ):
                instrument(owner, attr, phase)
            try:
                runs["warm"].append(timed(ours))
            finally:
                for owner, attr, original in reversed(wrapped):
                    setattr(owner, attr, original)
                wrapped.clear()
            ours_phases.setdefault("prepare (ours)", []).append(phases["prepare"][-1])
            ours_phases.setdefault("commit (ours)", []).append(phases["commit"][-1])
            warm_phases = (phases["prepare"][-1], phases["commit"][-1])
            runs["readonly"].append(timed(readonly))
            forget_engine_cache()
            runs["cold_no_cache"].append(timed(ours))
            forget_working_copy()
            runs["cold"].append(timed(ours))  # the engine cache is there again now
            ours_phases.setdefault("cold prepare (ours, beside playwright start)", []).append(
                phases["prepare"][-1]
            )
    finally:
        SessionLifecycle.prepare = original_prepare  # type: ignore[method-assign]
        ProfileStore.commit_state = original_commit  # type: ignore[method-assign]
    med = {k: statistics.median(v) for k, v in runs.items()}
    store.close()
    return {
        "engine": engine,
        "repeats": repeats,
        "median_s": med,
        "ratio_warm": med["warm"] / med["bare"],
        "ratio_cold": med["cold"] / med["bare"],
        "ratio_readonly": med["readonly"] / med["bare"],
        "ratio_cold_no_cache": med["cold_no_cache"] / med["bare"],
        "spread_s": {k: (min(v), max(v)) for k, v in runs.items()},
        "ratio_ci95": {k: ratio_interval(v, runs["bare"]) for k, v in runs.items() if k != "bare"},
        "phases_bare_s": {k: statistics.median(v) for k, v in bare_phases.items()},
        "phases_warm_s": {k: statistics.median(v) for k, v in ours_phases.items()},
        "last_warm_prepare_s": warm_phases[0],
        "last_warm_commit_s": warm_phases[1],
        "archive_bytes": store_profile_size(home / f"sessions-{engine}"),
    }


def store_profile_size(home: Path) -> int:
    with ProfileStore(home) as store:
        return store.get("bench").blob_size or 0


# ---------------------------------------------------------------------------- 2. teardown


def cli_pipe(directory: Path, compressor: list[str]) -> tuple[float, int] | None:
    if shutil.which(compressor[0]) is None:
        return None
    start = time.perf_counter()
    tar = subprocess.Popen(["tar", "-cf", "-", "-C", str(directory), "."], stdout=subprocess.PIPE)
    out = subprocess.run(compressor, stdin=tar.stdout, capture_output=True, check=True).stdout
    tar.wait()
    return time.perf_counter() - start, len(out)


def bench_teardown(engine: Engine, repeats: int, url: str, home: Path) -> dict[str, Any]:
    store = ProfileStore(home / f"teardown-{engine}")
    with Session(profile="real", store=store, archetype=f"desktop-{engine}") as page:
        visit(page, url)
    directory = store.working_copies.path(store.get("real").id)
    rows: dict[str, dict[str, float]] = {}
    for codec in ("zstd", "gzip"):
        for excludes in (True, False):
            times, sizes = [], []
            for _ in range(repeats):
                with open(os.devnull, "wb") as sink:
                    start = time.perf_counter()
                    stats = pack_dir(
                        directory, sink, engine=engine, codec=codec, apply_excludes=excludes
                    )  # type: ignore[arg-type]
                    times.append(time.perf_counter() - start)
                sizes.append(stats.compressed_bytes)
            key = f"{codec}{'' if excludes else ' (no excludes)'}"
            rows[key] = {
                "seconds": statistics.median(times),
                "bytes": sizes[-1],
                "packed_input_bytes": stats.uncompressed_bytes,
            }
    commits = []
    for _ in range(repeats):
        store.working_copies.mark_dirty(store.get("real").id)
        commits.append(timed(lambda: store.commit_state("real", directory)))
    cli: dict[str, dict[str, float] | None] = {}
    for name, command in (
        ("tar \\| zstd -3", ["zstd", "-3", "-q", "-T0", "-c"]),
        ("tar \\| gzip -6", ["gzip", "-6", "-c"]),
    ):
        results = [cli_pipe(directory, command) for _ in range(repeats)]
        ok = [r for r in results if r is not None]
        cli[name] = (
            {"seconds": statistics.median(r[0] for r in ok), "bytes": ok[-1][1]} if ok else None
        )
    store.close()
    commit = statistics.median(commits)
    zstd_cli = cli["tar \\| zstd -3"]
    return {
        "engine": engine,
        "dir_bytes": du(directory),
        "pack": rows,
        "commit_s": commit,
        "cli": cli,
        "commit_vs_cli_zstd": commit / zstd_cli["seconds"] if zstd_cli else None,
    }


# ---------------------------------------------------------------------------- 3. locks


def _writer(locks_dir: str, log_path: str, rounds: int, hold: float) -> None:
    lock = ProfileLock(Path(locks_dir), "prof_bench", timeout=120)
    for _ in range(rounds):
        lock.acquire()
        acquired = time.time()
        time.sleep(hold)
        released = time.time()
        with open(log_path, "a") as log:
            log.write(f"{os.getpid()} {acquired} {released}\n")
        lock.release()


def bench_locks(writers: int, rounds: int, home: Path) -> dict[str, Any]:
    locks_dir, log_path = home / "locks", home / "lock-log.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_writer, args=(str(locks_dir), str(log_path), rounds, 0.02))
        for _ in range(writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    spans = sorted(
        (float(a), float(b))
        for _pid, a, b in (line.split() for line in log_path.read_text().splitlines())
    )
    gaps = [nxt[0] - cur[1] for cur, nxt in itertools.pairwise(spans)]
    overlaps = sum(1 for g in gaps if g < 0)
    return {
        "writers": writers,
        "acquisitions": len(spans),
        "handoff_median_s": statistics.median(gaps),
        "handoff_max_s": max(gaps),
        "overlaps": overlaps,
    }


# ---------------------------------------------------------------------------- 4. catalog


def bench_catalog(count: int, home: Path, urls: tuple[str, str] | None = None) -> dict[str, Any]:
    if urls is None:
        store = ProfileStore(home / "catalog", max_profiles=None)
    else:
        store = ProfileStore(home / "catalog-shared", catalog=urls[0], blobs=urls[1])
    creates: list[float] = []
    first_page: dict[int, float] = {}
    checkpoints = sorted({min(1000, count), count})
    for i in range(count):
        creates.append(timed(lambda i=i: store.create(f"p-{i:06d}", labels={"n": str(i)})))  # type: ignore[misc]
        if i + 1 in checkpoints:
            first_page[i + 1] = statistics.median(
                timed(lambda: store.list(limit=100)) for _ in range(20)
            )
    names = [f"p-{random.randrange(count):06d}" for _ in range(1000)]
    gets = [timed(lambda n=n: store.get(n)) for n in names]  # type: ignore[misc]
    pages: list[float] = []
    seen = 0
    cursor = None
    walk_start = time.perf_counter()
    while True:
        start = time.perf_counter()
        page = store.list(limit=100, cursor=cursor)
        pages.append(time.perf_counter() - start)
        seen += len(page.data)
        if not page.has_more:
            break
        cursor = page.next_cursor
    walk = time.perf_counter() - walk_start
    store.close()
    quantile = statistics.quantiles
    return {
        "profiles": count,
        "create_median_s": statistics.median(creates),
        "create_p95_s": quantile(creates, n=20)[-1],
        "get_by_name_median_s": statistics.median(gets),
        "walk_all_pages_s": walk,
        "pages": len(pages),
        "seen": seen,
        "page_first_s": statistics.median(pages[:5]),
        "page_last_s": statistics.median(pages[-5:]),
        "first_page_at": {str(k): v for k, v in first_page.items()},
    }


# ---------------------------------------------------------------------------- 5. shared


@contextmanager
def shared_backend() -> Iterator[tuple[str, str] | None]:
    """Catalog and blobs URLs on PostgreSQL + S3, or None if there is no such backend here.

    ``$PROFILES_CATALOG_URL`` / ``$PROFILES_BLOBS_URL`` are used as they are; else the
    servers named by ``$PROFILES_TEST_POSTGRES_URL`` / ``$PROFILES_TEST_S3_ENDPOINT`` (what
    ``scripts/services.sh start`` exports) get a fresh database and bucket; else this starts
    the servers with ``scripts/services.sh`` and stops them at the end."""
    catalog = os.environ.get("PROFILES_CATALOG_URL")
    blobs = os.environ.get("PROFILES_BLOBS_URL")
    if catalog and blobs:
        yield catalog, blobs
        return
    root = Path(__file__).resolve().parent.parent
    services = ["bash", str(root / "scripts" / "services.sh")]
    saved = dict(os.environ)
    started = False
    try:
        if not (
            os.environ.get("PROFILES_TEST_POSTGRES_URL")
            and os.environ.get("PROFILES_TEST_S3_ENDPOINT")
        ):
            run = subprocess.run([*services, "start"], capture_output=True, text=True)
            if run.returncode != 0:
                sys.stderr.write(f"bench: no shared backend ({run.stderr.strip()[-300:]})\n")
                yield None
                return
            started = True
            for line in (root / ".services.env").read_text().splitlines():
                for pair in line.removeprefix("export ").split():
                    key, _, value = pair.partition("=")
                    os.environ[key] = value
        yield _fresh_backend()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if started:
            subprocess.run([*services, "stop"], capture_output=True)


def _fresh_backend() -> tuple[str, str]:
    import uuid

    import boto3
    import psycopg

    os.environ["AWS_ENDPOINT_URL"] = os.environ["PROFILES_TEST_S3_ENDPOINT"]
    for key, default in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ):
        os.environ.setdefault(key, default)
    admin = os.environ["PROFILES_TEST_POSTGRES_URL"]
    db = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    client.close()
    return admin.rsplit("/", 1)[0] + f"/{db}", f"s3://{bucket}/bench"


def bench_shared_sessions(
    engine: Engine, repeats: int, url: str, home: Path, urls: tuple[str, str]
) -> dict[str, Any]:
    """Session round trips on the embedded store and the shared one, interleaved."""
    embedded = ProfileStore(home / f"emb-{engine}")
    shared = ProfileStore(home / f"shared-{engine}", catalog=urls[0], blobs=urls[1])
    archetype = f"desktop-{engine}"
    for store in (embedded, shared):
        with Session(profile=f"bench-{engine}", store=store, archetype=archetype) as page:
            visit(page, url)

    def run(store: ProfileStore, cold: bool) -> float:
        if cold:
            store.working_copies.remove(store.get(f"bench-{engine}").id)

        def once() -> None:
            with Session(profile=f"bench-{engine}", store=store) as page:
                visit(page, url)

        return timed(once)

    def fresh_container(n: int, sharing: str) -> float:
        """A new, empty home on the shared backend: no working copy, no engine cache of its
        own; with sharing on it fetches the build's cache the fleet published."""
        fresh = ProfileStore(home / f"fresh-{engine}-{sharing}-{n}", catalog=urls[0], blobs=urls[1])
        previous = os.environ.get("PROFILES_ENGINE_CACHE_SHARING")
        os.environ["PROFILES_ENGINE_CACHE_SHARING"] = sharing
        try:
            return run(fresh, False)
        finally:
            if previous is None:
                os.environ.pop("PROFILES_ENGINE_CACHE_SHARING", None)
            else:
                os.environ["PROFILES_ENGINE_CACHE_SHARING"] = previous
            fresh.close()

    keys = ("emb_warm", "sh_warm", "emb_cold", "sh_cold", "sh_fresh_fleet", "sh_fresh_alone")
    runs: dict[str, list[float]] = {k: [] for k in keys}
    for n in range(repeats):
        runs["emb_warm"].append(run(embedded, False))
        runs["sh_warm"].append(run(shared, False))
        runs["emb_cold"].append(run(embedded, True))
        runs["sh_cold"].append(run(shared, True))
        runs["sh_fresh_fleet"].append(fresh_container(n, "fetch"))
        runs["sh_fresh_alone"].append(fresh_container(n, "off"))
    # commit alone: the same closed directory committed to each backend
    work = embedded.working_copies.path(embedded.get(f"bench-{engine}").id)
    commits: dict[str, list[float]] = {"embedded": [], "shared": []}
    for i in range(repeats):
        (work / f"bench-touch-{i}").write_bytes(os.urandom(4096))  # a small change each time
        commits["embedded"].append(timed(lambda: embedded.commit_state(f"bench-{engine}", work)))
        commits["shared"].append(timed(lambda: shared.commit_state(f"bench-{engine}", work)))
    med = {k: statistics.median(v) for k, v in runs.items()}
    embedded.close()
    shared.close()
    return {
        "engine": engine,
        "repeats": repeats,
        "median_s": med,
        "ratio_warm": med["sh_warm"] / med["emb_warm"],
        "ratio_cold": med["sh_cold"] / med["emb_cold"],
        "ratio_fresh_fleet": med["sh_fresh_fleet"] / med["emb_cold"],
        "ratio_fresh_alone": med["sh_fresh_alone"] / med["emb_cold"],
        "commit_embedded_s": statistics.median(commits["embedded"]),
        "commit_shared_s": statistics.median(commits["shared"]),
    }


def _lease_worker(home: str, catalog: str, blobs: str, log_path: str, rounds: int) -> None:
    store = ProfileStore(home, catalog=catalog, blobs=blobs)
    for _ in range(rounds):
        lease = store.lock("handoff", timeout=120)
        lease.acquire()
        acquired = time.time()
        time.sleep(0.02)
        released = time.time()
        with open(log_path, "a") as log:
            log.write(f"{os.getpid()} {acquired} {released}\n")
        lease.release()
        time.sleep(0.03)  # between two sessions: lets the other worker's wait succeed
    store.close()


def bench_shared_handoff(rounds: int, home: Path, urls: tuple[str, str]) -> dict[str, Any]:
    with ProfileStore(home / "handoff-setup", catalog=urls[0], blobs=urls[1]) as store:
        store.create("handoff")
    log_path = home / "lease-log.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_lease_worker,
            args=(str(home / f"worker-{i}"), urls[0], urls[1], str(log_path), rounds),
        )
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    entries = [line.split() for line in log_path.read_text().splitlines()]
    spans = sorted((float(a), float(b), pid) for pid, a, b in entries)
    gaps = [
        nxt[0] - cur[1] for cur, nxt in itertools.pairwise(spans) if nxt[2] != cur[2]
    ]  # hand-offs between the two processes only
    return {
        "acquisitions": len(spans),
        "handoffs": len(gaps),
        "handoff_median_s": statistics.median(gaps) if gaps else float("nan"),
        "handoff_max_s": max(gaps) if gaps else float("nan"),
        "overlaps": sum(1 for cur, nxt in itertools.pairwise(spans) if nxt[0] < cur[1]),
    }


# ---------------------------------------------------------------------------- 6. incremental


def _blob_sizes(store: ProfileStore) -> dict[str, int]:
    blobs = getattr(store, "bench_server_blobs", None) or store.blobs
    return {b.checksum: b.size for b in blobs.list()}


class _Sent:
    """The request bytes an HTTP store's client sends (its Content-Length headers)."""

    def __init__(self, store: ProfileStore) -> None:
        self.bytes = 0
        client = getattr(store.service, "_client", None)
        if client is not None:
            client.event_hooks["request"].append(self._count)

    def _count(self, request: Any) -> None:
        self.bytes += int(request.headers.get("content-length", "0"))


def bench_incremental(
    mb: float,
    repeats: int,
    home: Path,
    urls: tuple[str, str] | None,
    server: Any = None,
) -> list[dict[str, Any]]:
    """One size: commit costs of a one-cookie and a 10 % change, per backend and format.

    "written" is the bytes of blobs a commit added (new chunks and manifest, or the new
    archive); "sent" (through HTTP) the bytes the client sent for it; the storage ratio
    keeps all ten states of ten one-cookie commits (as snapshots) and compares the store
    with what the first state alone took."""
    from bench_chunked import make_profile, one_cookie, ten_percent

    from profiles.blobs import LocalBlobStore

    rows: list[dict[str, Any]] = []
    backends: list[tuple[str, dict[str, Any]]] = [("embedded", {})]
    if urls is not None:
        backends.append(("shared", {"catalog": urls[0], "blobs": urls[1]}))
    if server is not None:
        backends.append(("http", {"service": f"{server.url}/v1", "api_key": server.api_key}))
    for backend, where in backends:
        for chunked in (True, False):
            tag = f"{backend}-{'chunked' if chunked else 'archive'}-{mb:g}"
            own = dict(where)
            if "blobs" in own:  # each arm its own prefix, so its storage is its own
                own["blobs"] = f"{own['blobs']}/{tag}"
            store = ProfileStore(home / f"inc-{tag}", chunked=chunked, cache_max_bytes=None, **own)
            if backend == "http":  # what the server's account store holds
                store.bench_server_blobs = LocalBlobStore(  # type: ignore[attr-defined]
                    server.home / "accounts" / server.account_id / "blobs"
                )
            sent = _Sent(store)
            name = f"inc-{tag}"
            store.create(name)
            lease = store.lock(name)
            lease.acquire()
            _, work = store.checkout(name, lock=lease)
            make_profile(work, mb)
            kept = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
            # Commits name the profile by the record they hold and keep the one each commit
            # returns, as a session does.
            record = [store.get(name)]

            def commit() -> None:
                record[0] = store.commit_state(record[0], work, epoch=lease.epoch)  # noqa: B023

            first_s = timed(commit)
            store.snapshot(name)
            one_state = sum(_blob_sizes(store).values())

            def commit_after(change: Callable[[int], object], n: int) -> tuple[float, int, int]:
                before = _blob_sizes(store)  # noqa: B023
                change(n)
                sent.bytes = 0  # noqa: B023
                took = timed(commit)
                over_the_wire = sent.bytes  # noqa: B023
                after = _blob_sizes(store)  # noqa: B023
                return took, sum(v for k, v in after.items() if k not in before), over_the_wire

            cookie = []
            for i in range(9):  # ten states in all, each kept by a snapshot
                cookie.append(commit_after(lambda n: one_cookie(work, n), i))  # noqa: B023
                store.snapshot(name)
            ten_states = sum(_blob_sizes(store).values())
            ten = [
                commit_after(lambda n: ten_percent(work, n, kept), 100 + i)  # noqa: B023
                for i in range(repeats)
            ]
            lease.release()
            profile_id = store.get(name).id
            store.close()
            # A cold checkout as a fresh process makes it: no working copy and no manifest
            # kept in memory (shared: a new, empty home on the same catalog and blobs, as
            # a fresh container); median of three.
            colds = []
            for i in range(3):
                at = home / f"inc-{tag}" if backend == "embedded" else home / f"cold-{tag}-{i}"
                # (a fresh HttpService too: its manifests kept in memory go with it)
                fresh = ProfileStore(at, chunked=chunked, cache_max_bytes=None, **own)
                fresh.working_copies.remove(profile_id)
                colds.append(timed(lambda: _checkout(fresh, name)))  # noqa: B023
                fresh.close()
            cold = statistics.median(colds)
            rows.append(
                {
                    "mb": mb,
                    "backend": backend,
                    "format": "chunked" if chunked else "archive",
                    "first_commit_s": first_s,
                    "cookie_commit_s": statistics.median(t for t, _, _ in cookie),
                    "cookie_written": statistics.median(w for _, w, _ in cookie),
                    "cookie_sent": statistics.median(s for _, _, s in cookie)
                    if backend == "http"
                    else None,
                    "ten_commit_s": statistics.median(t for t, _, _ in ten),
                    "ten_written": statistics.median(w for _, w, _ in ten),
                    "storage_10_vs_1": ten_states / max(1, one_state),
                    "cold_checkout_s": cold,
                }
            )
    return rows


def bench_http(repeats: int, url: str, home: Path, quick: bool) -> dict[str, Any]:
    """Sessions through the HTTP client against the embedded store, bulk transfer, rps."""
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # for support/
    from support.http_service import start_http_server

    def hwm_kb(pid: int) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    result: dict[str, Any] = {}
    with start_http_server(home / "http-server") as server:
        remote = ProfileStore(
            home / "http-client", service=f"{server.url}/v1", api_key=server.api_key
        )
        local = ProfileStore(home / "http-embedded")
        for store in (remote, local):
            with Session(profile="bench-http", store=store) as page:
                visit(page, url)
        runs: dict[str, list[float]] = {"embedded": [], "http": []}

        def session(store: ProfileStore) -> None:
            with Session(profile="bench-http", store=store) as page:
                visit(page, url)

        for _ in range(repeats):
            runs["embedded"].append(timed(lambda: session(local)))
            runs["http"].append(timed(lambda: session(remote)))
        result["session_median_s"] = {k: statistics.median(v) for k, v in runs.items()}
        result["session_ratio"] = result["session_median_s"]["http"] / max(
            1e-9, result["session_median_s"]["embedded"]
        )
        result["session_ratio_ci95"] = ratio_interval(runs["http"], runs["embedded"])
        # 100 MB archive: upload (multipart) and download (signed link), streamed
        size_mb = 10 if quick else 100
        src = home / "http-big"
        (src / "Default").mkdir(parents=True)
        (src / "Local State").write_text("{}")
        (src / "Default" / "Preferences").write_text("{}")
        (src / "Default" / "blob.bin").write_bytes(os.urandom(size_mb * 1024 * 1024))
        archive = home / "http-big.tar.zst"
        with archive.open("wb") as out:
            pack_dir(src, out, engine="chromium", codec="zstd")
        remote.create("bench-big")
        before = hwm_kb(server.pid)
        up = timed(lambda: remote.import_state("bench-big", archive))
        dl_path = home / "http-big-back.tar.gz"
        down = timed(lambda: remote.export_state("bench-big", dl_path, codec="zstd"))
        result["archive_bytes"] = archive.stat().st_size
        result["upload_mb_s"] = archive.stat().st_size / up / 1e6
        result["download_mb_s"] = dl_path.stat().st_size / down / 1e6
        result["server_hwm_growth_mb"] = (hwm_kb(server.pid) - before) / 1024
        # requests per second of GET /v1/profiles, one client connection
        with httpx.Client(base_url=server.url, headers=server.headers()) as client:
            n = 100 if quick else 500
            took = timed(lambda: [client.get("/v1/profiles?limit=50") for _ in range(n)])
        result["list_rps"] = n / took
        remote.close()
        local.close()
    return result


def bench_remote(repeats: int, url: str, home: Path) -> dict[str, Any]:
    """Sessions as a service next to local sessions, interleaved: from asking for a
    session to a page a script can drive (a local ``Session`` opening; ``RemoteSession``:
    ``POST /v1/sessions`` starting the service's browser, then ``connect_over_cdp``), and
    from the end of the block to the state committed (a local session's close and
    commit; the remote one's disconnect and ``PATCH .../stop``, the service closing its
    browser and committing). Client and service on this one machine."""
    from driver import RemoteSession

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # for support/
    from support.http_service import start_http_server

    runs: dict[str, list[float]] = {k: [] for k in ("local_open", "remote_open")}
    runs.update({k: [] for k in ("local_end", "remote_end")})
    with start_http_server(home / "remote-server") as server:
        remote = ProfileStore(
            home / "remote-client", service=f"{server.url}/v1", api_key=server.api_key
        )
        local = ProfileStore(home / "remote-local")
        remote.create("bench-remote")
        kinds: list[tuple[str, Callable[[], Any]]] = [
            ("local", lambda: Session(profile="bench-remote", store=local)),
            ("remote", lambda: RemoteSession(profile="bench-remote", store=remote)),
        ]
        for i in range(repeats + 1):  # the first round warms both up and is not counted
            for kind, make in kinds:
                session = make()
                started = time.perf_counter()
                page = session.__enter__()
                opened = time.perf_counter()
                visit(page, url)
                ending = time.perf_counter()
                session.__exit__(None, None, None)
                ended = time.perf_counter()
                if i:
                    runs[f"{kind}_open"].append(opened - started)
                    runs[f"{kind}_end"].append(ended - ending)
        remote.close()
        local.close()
    medians = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "median_s": medians,
        "open_ratio": medians["remote_open"] / max(1e-9, medians["local_open"]),
        "open_ratio_ci95": ratio_interval(runs["remote_open"], runs["local_open"]),
        "end_ratio": medians["remote_end"] / max(1e-9, medians["local_end"]),
        "end_ratio_ci95": ratio_interval(runs["remote_end"], runs["local_end"]),
        "repeats": repeats,
    }


def _checkout(store: ProfileStore, name: str) -> None:
    with store.lock(name) as lease:
        store.checkout(name, lock=lease)


# ---------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    from importlib.metadata import version

    browsers = {}
    for engine in ("chromium", "firefox"):
        try:
            b = find_browser(engine)  # type: ignore[arg-type]
            browsers[engine] = f"{probe_version(b)} ({b.source}: {b.executable_path})"
        except Exception as exc:
            browsers[engine] = f"missing: {exc}"
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem / 1024**3, 1),
        "python": platform.python_version(),
        "playwright": version("playwright"),
        "os": platform.platform(),
        "browsers": browsers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--engines", default="chromium,firefox")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--profiles", type=int)
    parser.add_argument("--writers", type=int)
    parser.add_argument("--no-shared", action="store_true", help="skip the shared backend")
    parser.add_argument("--big", action="store_true", help="add the 400 MB incremental case")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated sections to run: sessions,teardown,locks,"
        "catalog,shared,incremental,http,remote (default all)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("profiles.state.inspection").setLevel(logging.ERROR)  # synthetic cookie dbs
    only = {s.strip() for s in args.only.split(",") if s.strip()}

    def wanted(section: str) -> bool:
        return not only or section in only

    repeats = args.repeats or (2 if args.quick else 7)
    session_repeats = args.repeats or (2 if args.quick else 15)
    count = args.profiles or (500 if args.quick else 10_000)
    writers = args.writers or (2 if args.quick else 4)
    engines: list[Engine] = [e.strip() for e in args.engines.split(",") if e.strip()]  # type: ignore[misc]
    results: dict[str, Any] = {"machine": machine()}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="profiles-bench-") as tmp, local_server() as base:
        home = Path(tmp)
        url = f"{base}/page"
        if wanted("sessions"):
            # Sessions vary by +-10 % run to run here: more runs, to tell 5 % apart.
            results["sessions"] = [bench_sessions(e, session_repeats, url, home) for e in engines]
        if wanted("teardown"):
            results["teardown"] = [bench_teardown(e, repeats, url, home) for e in engines]
        if wanted("locks"):
            results["locks"] = bench_locks(writers, 3 if args.quick else 10, home)
        if wanted("catalog"):
            results["catalog"] = bench_catalog(count, home)
        shared_wanted = not args.no_shared and (wanted("shared") or wanted("incremental"))
        with shared_backend() if shared_wanted else contextlib.nullcontext() as urls:
            if wanted("incremental"):
                sizes = [1.0] if args.quick else [1.0, 10.0, 100.0] + ([400.0] if args.big else [])
                sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
                from support.http_service import start_http_server

                with start_http_server(home / "inc-server") as server:
                    results["incremental"] = [
                        row
                        for mb in sizes
                        for row in bench_incremental(mb, 1 if args.quick else 3, home, urls, server)
                    ]
            if wanted("http"):
                # sessions vary by 10 % from one to the next here: as many as section 1 runs
                results["http"] = bench_http(session_repeats, url, home, args.quick)
            if wanted("remote") and "chromium" in engines:
                results["remote"] = bench_remote(session_repeats, url, home)
            if wanted("shared") and not args.no_shared and urls is not None:
                results["shared_sessions"] = [
                    bench_shared_sessions(e, repeats, url, home, urls) for e in engines
                ]
                results["shared_handoff"] = bench_shared_handoff(
                    5 if args.quick else 20, home, urls
                )
                results["shared_catalog"] = bench_catalog(count, home, urls)
    results["run"] = {
        "argv": sys.argv[1:] if argv is None else argv,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.time() - started),
    }
    text = report(results)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
