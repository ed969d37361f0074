"""Micro-benchmark: chunked, deduplicated states against today's whole-archive states.

    python scripts/bench_chunked.py [--sizes 1,10,100] [--big] [--repeats 3]
                                    [--chunk-size KiB] [--json FILE]

For Chromium-shaped profiles of each size (SQLite databases updated in place, LevelDB
logs and tables, write-once blob files, a few hundred small files, excluded caches), with
whole-second mtimes in the past like a profile used for weeks:

* today: ``pack_dir`` (zstd) to a file with its SHA-256 (what a commit does), and a cold
  ``unpack_archive`` of that archive;
* chunked: the first (full) commit; a one-cookie change and a 10% change, each committed
  with the previous manifest and stat cache (median of ``--repeats``), the bytes written;
  the store after 10 one-cookie commits against after one; loading a manifest; a cold
  ``restore_chunked``; and ``apply_chunked`` of a one-cookie change.

``--big`` adds the 400 MB profile. Run it alone: it is CPU- and disk-bound.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiles.blobs.local import LocalBlobStore
from profiles.state.archive import pack_dir, unpack_archive
from profiles.state.chunked import (
    CHUNK_SIZE,
    PackResult,
    apply_chunked,
    load_manifest,
    pack_chunked,
    restore_chunked,
)

MiB = 1024 * 1024
PAST = 1_600_000_000


# ---------------------------------------------------------------------------- profiles


def corpus(seed: int) -> bytes:
    rng = random.Random(seed)
    words = [f"{rng.getrandbits(40):010x}" for _ in range(3000)]
    return "".join(
        f"https://{rng.choice(words)}.example.com/{rng.choice(words)}/{rng.choice(words)}"
        f"?id={rng.getrandbits(32)}&t={rng.choice(words)};"
        for _ in range(60_000)
    ).encode()


CORPUS = corpus(0)


def text(rng: random.Random, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        start = rng.randrange(len(CORPUS) - 8192)
        out += CORPUS[start : start + min(n - len(out), rng.randrange(512, 8192))]
    return bytes(out)


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def sqlite_db(path: Path, size: int, rng: random.Random, *, binary: float = 0.0) -> None:
    """A table of text rows (``binary`` of each row random bytes) of about ``size``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    row = 400
    try:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, host TEXT, value BLOB)")
        db.executemany(
            "INSERT INTO t VALUES (?, ?, ?)",
            (
                (
                    i,
                    f"h{i % 997}.example.com",
                    text(rng, int(row * (1 - binary))) + rng.randbytes(int(row * binary)),
                )
                for i in range(max(20, size // (row + 40)))
            ),
        )
        db.commit()
    finally:
        db.close()


def make_profile(root: Path, mb: float, seed: int = 0) -> Path:
    """About ``mb`` MB of kept files: SQLite 40%, LevelDB 25%, blob files 35%."""
    rng = random.Random(seed)
    total = int(mb * MiB)
    d = root / "Default"
    write(root / "Local State", json.dumps({"browser": {"last_version": "130"}}).encode())
    write(d / "Preferences", text(rng, 20_000))
    write(d / "Secure Preferences", text(rng, 5_000))
    sqlite_db(d / "Cookies", max(64 * 1024, total // 100), rng)
    sqlite_db(d / "History", int(total * 0.25), rng)
    sqlite_db(d / "Favicons", int(total * 0.08), rng, binary=0.8)
    sqlite_db(d / "Web Data", int(total * 0.04), rng)
    sqlite_db(d / "Login Data", 40_000, rng)
    for name, share in (("Local Storage/leveldb", 0.05), ("IndexedDB/x.indexeddb.leveldb", 0.2)):
        ldb = d / name
        write(ldb / "CURRENT", b"MANIFEST-000001\n")
        write(ldb / "LOG", b"")
        write(ldb / "LOCK", b"")
        write(ldb / "MANIFEST-000001", text(rng, 300))
        size = int(total * share)
        tables = max(1, size // (2 * MiB))
        for i in range(tables):  # snappy-compressed tables: half text, half noise
            half = size // tables // 2
            write(ldb / f"{i + 5:06d}.ldb", text(rng, half) + rng.randbytes(half))
        write(ldb / "000003.log", text(rng, 64 * 1024))
    left = int(total * 0.35)
    blob_dir = d / "Service Worker" / "CacheStorage" / "abc"
    i = 0
    while left > 0:  # a few hundred files, most small, a few large
        n = min(left, rng.choice([2_000, 8_000, 30_000, 120_000, 600_000, 3_000_000]))
        data = rng.randbytes(n // 2) + text(rng, n - n // 2)
        write(blob_dir / f"{i:08x}_0", data)
        left -= n
        i += 1
    for j in range(max(20, int(mb * 2))):  # small files everywhere
        write(d / "Sessions" / f"Tabs_{j}", text(rng, rng.randrange(100, 4000)))
    write(d / "Cache" / "Cache_Data" / "data_1", rng.randbytes(min(total // 4, 20 * MiB)))
    write(d / "Code Cache" / "js" / "index", b"x" * 1000)
    paths = sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for k, path in enumerate(paths):
        t = (PAST + k) * 1_000_000_000
        os.utime(path, ns=(t, t))
    return root


def one_cookie(root: Path, n: int) -> None:
    db = sqlite3.connect(root / "Default" / "Cookies")
    try:
        db.execute("UPDATE t SET value = ? WHERE id = ?", (f"session-{n}".encode(), 17 + n))
        db.commit()
    finally:
        db.close()


def ten_percent(root: Path, n: int, kept_bytes: int) -> int:
    """Change ~10% of the profile: new blob files, new LevelDB tables, History rows."""
    rng = random.Random(1000 + n)
    d = root / "Default"
    budget = kept_bytes // 10
    written = 0
    blob_dir = d / "Service Worker" / "CacheStorage" / "abc"
    while written < budget * 0.5:
        size = rng.choice([30_000, 600_000, 3_000_000])
        write(blob_dir / f"new-{n}-{written}", rng.randbytes(size // 2) + text(rng, size // 2))
        written += size
    ldb = d / "IndexedDB" / "x.indexeddb.leveldb"
    while written < budget * 0.9:
        write(ldb / f"{900_000 + n * 1000 + written % 997:06d}.ldb", rng.randbytes(MiB))
        written += MiB
    history = (d / "History").stat().st_size
    db = sqlite3.connect(d / "History")  # new visits: rows appended
    try:
        first = db.execute("SELECT max(id) FROM t").fetchone()[0] + 1
        rows = max(1, (budget - written) // 440)
        db.executemany(
            "INSERT INTO t VALUES (?, ?, ?)",
            ((first + i, "new.example.com", text(rng, 400)) for i in range(rows)),
        )
        db.commit()
    finally:
        db.close()
    return written + (d / "History").stat().st_size - history


# ---------------------------------------------------------------------------- measuring


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def store_bytes(blobs: LocalBlobStore) -> int:
    return sum(b.size for b in blobs.list())


class _HashingFile:
    def __init__(self, path: Path) -> None:
        self._f = path.open("wb")
        self._h = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._h.update(data)
        self._f.write(data)
        return len(data)

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def bench_size(mb: float, repeats: int, chunk_size: int, scratch: Path) -> dict[str, Any]:
    work = scratch / f"p{mb:g}"
    root = make_profile(work / "profile", mb)
    # Today: a whole archive per commit.
    archive = work / "state.tar.zst"

    def today_commit() -> None:
        sink = _HashingFile(archive)
        pack_dir(root, sink, engine="chromium", codec="zstd")
        sink.close()

    today_s = median_time(today_commit, repeats)
    archive_bytes = archive.stat().st_size

    blobs = LocalBlobStore(work / "blobs")
    first = pack_chunked(root, "chromium", blobs, chunk_size=chunk_size)
    after_one = store_bytes(blobs)
    manifest = first.manifest
    small = sum(1 for e in manifest.files() if 0 < e.size < chunk_size)
    last: PackResult = first

    def commit(change: Callable[[int], object]) -> tuple[float, PackResult]:
        nonlocal last
        change(commits[0])
        commits[0] += 1
        start = time.perf_counter()
        prev = load_manifest(blobs, last.checksum)
        result = pack_chunked(
            root, "chromium", blobs, previous=prev, previous_stat=last.stat_cache,
            chunk_size=chunk_size,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        last = result
        return elapsed, result

    commits = [0]
    cookie_runs = [commit(lambda n: one_cookie(root, n)) for _ in range(10)]
    after_ten = store_bytes(blobs)
    cookie_times = [t for t, _ in cookie_runs[:repeats]]
    cookie_pack_only = [r.stats.seconds for _, r in cookie_runs[:repeats]]
    cookie_bytes = statistics.median(r.stats.bytes_written for _, r in cookie_runs[:repeats])
    load_s = median_time(lambda: load_manifest(blobs, last.checksum), repeats)

    # Apply a one-cookie change to a copy at the previous state, against a full restore.
    at_old = work / "at-old"
    old = last
    restored = restore_chunked(old.manifest, blobs, at_old)
    _, new = commit(lambda n: one_cookie(root, n))
    start = time.perf_counter()
    apply_chunked(old.manifest, new.manifest, blobs, at_old, stat_cache=restored.stat_cache)
    apply_s = time.perf_counter() - start

    ten_runs = []
    raw: list[int] = []
    for _ in range(repeats):
        before = store_bytes(blobs)
        kept = last.stats.uncompressed_bytes

        def change(n: int, kept: int = kept) -> None:
            raw.append(ten_percent(root, n, kept))

        elapsed, result = commit(change)
        ten_runs.append((elapsed, store_bytes(blobs) - before, result))

    # Cold restores against today's unpack, interleaved (a busy machine hits both alike).
    walls: dict[str, list[float]] = {"restore": [], "unpack": []}
    cpus: dict[str, list[float]] = {"restore": [], "unpack": []}
    runs: dict[str, Callable[[Path], object]] = {
        "restore": lambda target: restore_chunked(last.manifest, blobs, target),
        "unpack": lambda target: unpack_archive(archive, target),
    }
    for _ in range(max(3, repeats)):
        for name, run in runs.items():
            target = work / f"cold-{name}"
            shutil.rmtree(target, ignore_errors=True)
            cpu, wall = cpu_seconds(), time.perf_counter()
            run(target)
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(cpu_seconds() - cpu)
            shutil.rmtree(target, ignore_errors=True)
    stats = last.stats
    row = {
        "mb": mb,
        "files": stats.files,
        "kept_bytes": first.stats.uncompressed_bytes,
        "archive_bytes": archive_bytes,
        "today_commit_s": today_s,
        "first_commit_s": first.stats.seconds,
        "first_commit_bytes": first.stats.bytes_written,
        "chunks": first.stats.chunks,
        "chunks_stored": first.stats.chunks_written,
        "packs": first.stats.packs_written,
        "small_file_chunks": small,
        "manifest_bytes": first.stats.manifest_bytes,
        "cookie_commit_s": statistics.median(cookie_times),
        "cookie_pack_s": statistics.median(cookie_pack_only),
        "cookie_bytes": cookie_bytes,
        "manifest_load_s": load_s,
        "storage_10_over_1": after_ten / after_one,
        "apply_cookie_s": apply_s,
        "ten_commit_s": statistics.median(t for t, _, _ in ten_runs),
        "ten_bytes": statistics.median(b for _, b, _ in ten_runs),
        "ten_raw": statistics.median(raw),
        "restore_s": statistics.median(walls["restore"]),
        "today_unpack_s": statistics.median(walls["unpack"]),
        "restore_cpu_s": statistics.median(cpus["restore"]),
        "unpack_cpu_s": statistics.median(cpus["unpack"]),
    }
    shutil.rmtree(work, ignore_errors=True)
    return row


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def report(rows: list[dict[str, Any]], chunk_size: int) -> str:
    head = [
        "profile",
        "files / chunks (small) / manifest",
        "today: commit, stored",
        "first chunked commit, stored",
        "1 cookie: commit (pack only), written",
        "10% change: commit, written (raw change)",
        "10 cookie commits / 1",
        "cold restore vs unpack_archive: wall (CPU)",
        "apply 1 cookie",
        "manifest load",
    ]
    lines = [
        f"Chunk size {chunk_size // 1024} KiB; medians; local blob store (fsync per blob); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{r['mb']:g} MB ({size(r['kept_bytes'])} kept)",
                    f"{r['files']} / {r['chunks']} ({r['small_file_chunks']}) / "
                    f"{size(r['manifest_bytes'])}",
                    f"{ms(r['today_commit_s'])}, {size(r['archive_bytes'])}",
                    f"{ms(r['first_commit_s'])}, {size(r['first_commit_bytes'])}",
                    f"{ms(r['cookie_commit_s'])} ({ms(r['cookie_pack_s'])}), "
                    f"{size(r['cookie_bytes'])}",
                    f"{ms(r['ten_commit_s'])}, {size(r['ten_bytes'])} ({size(r['ten_raw'])})",
                    f"{r['storage_10_over_1']:.3f}x",
                    f"{ms(r['restore_s'])} ({ms(r['restore_cpu_s'])}) vs "
                    f"{ms(r['today_unpack_s'])} ({ms(r['unpack_cpu_s'])})",
                    ms(r["apply_cookie_s"]),
                    ms(r["manifest_load_s"]),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1,10,100", help="profile sizes in MB")
    parser.add_argument("--big", action="store_true", help="add the 400 MB profile")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE // 1024, help="KiB")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",") if s]
    if args.big and 400 not in sizes:
        sizes.append(400)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-chunked-") as tmp:
        for mb in sizes:
            rows.append(bench_size(mb, args.repeats, args.chunk_size * 1024, Path(tmp)))
            print(f"... {mb:g} MB done", file=sys.stderr)
    print(report(rows, args.chunk_size * 1024))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
