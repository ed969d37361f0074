"""The benchmark's tables, from the figures ``scripts/bench.py --json FILE`` writes.

    python scripts/bench_tables.py FILE            # rewrite the block in docs/benchmark.md
    python scripts/bench_tables.py FILE --stdout   # print the tables instead

``scripts/bench.py`` prints the same tables when it finishes (it calls :func:`report`), so
the JSON holds every figure it prints. The block of docs/benchmark.md between :data:`BEGIN`
and :data:`END` is replaced whole; the text around it is written by hand. Nothing here runs
a benchmark or imports the library.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmark.md"
BEGIN = "<!-- BEGIN GENERATED: scripts/bench_tables.py (do not edit by hand) -->"
END = "<!-- END GENERATED: scripts/bench_tables.py -->"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def size(n: float) -> str:
    return f"{n / 1024 / 1024:.2f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table; a ``|`` inside a cell (``tar | zstd -3``) is escaped."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [line(headers), "|" + "---|" * len(headers)]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        "### Machine",
        f"{m['cpus']} x {m['cpu']}, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}, "
        f"Playwright {m['playwright']}; " + "; ".join(f"{k} {v}" for k, v in m["browsers"].items()),
        "",
    ]
    run = results.get("run")
    if run:
        command = " ".join(["scripts/bench.py", *run.get("argv", [])])
        out += [f"Run {run.get('finished', '?')}: `{command}`", ""]
    if results.get("sessions"):
        out += ["### 1. Session overhead (median wall time of a full open → goto → close)", ""]
        rows = []
        for r in results["sessions"]:
            med = r["median_s"]
            rows.append(
                [
                    r["engine"],
                    ms(med["bare"]),
                    ms(med["warm"]),
                    f"{r['ratio_warm']:.2f}",
                    ms(med["cold"]),
                    f"{r['ratio_cold']:.2f}",
                    f"{ms(med['cold_no_cache'])} ({r['ratio_cold_no_cache']:.2f})",
                    f"{ms(med['readonly'])} ({r['ratio_readonly']:.2f})",
                    ms(r["last_warm_prepare_s"]),
                    ms(r["last_warm_commit_s"]),
                    size(r["archive_bytes"]),
                    str(r["repeats"]),
                ]
            )
        out += [
            table(
                [
                    "engine",
                    "bare Playwright",
                    "warm",
                    "warm ratio (≤ 1.05)",
                    "cold",
                    "cold ratio (≤ 1.10)",
                    "cold, fresh container: no engine cache (ratio)",
                    "read-only (ratio)",
                    "warm prepare",
                    "warm commit",
                    "state size",
                    "runs",
                ],
                rows,
            ),
            "",
        ]
    if results.get("sessions"):
        out += ["Spread of the runs (min to max):", ""]
        for r in results["sessions"]:
            spread = ", ".join(
                f"{k} {ms(lo)} to {ms(hi)}" for k, (lo, hi) in r.get("spread_s", {}).items()
            )
            out.append(f"- {r['engine']}: {spread}")
        out.append("")
        out += ["Ratios to bare Playwright, 95 % bootstrap interval of the ratio of medians:", ""]
        for r in results["sessions"]:
            intervals = ", ".join(
                f"{k} {lo:.2f} to {hi:.2f}" for k, (lo, hi) in r.get("ratio_ci95", {}).items()
            )
            out.append(f"- {r['engine']}: {intervals}")
        out.append("")
        out += ["Phases of a warm round trip (medians; bare Playwright next to a session):", ""]
        rows = []
        for r in results["sessions"]:
            bare_p, ours_p = r.get("phases_bare_s", {}), r.get("phases_warm_s", {})
            for phase in dict.fromkeys([*bare_p, *ours_p]):
                rows.append(
                    [
                        r["engine"],
                        phase,
                        ms(bare_p[phase]) if phase in bare_p else "-",
                        ms(ours_p[phase]) if phase in ours_p else "-",
                    ]
                )
        out += [table(["engine", "phase", "bare", "session"], rows), ""]
    if results.get("teardown"):
        out += ["### 2. Teardown: pack and commit a realistic profile", ""]
        rows = []
        for r in results["teardown"]:
            for name, v in r["pack"].items():
                rows.append(
                    [
                        r["engine"],
                        f"library {name}",
                        ms(v["seconds"]),
                        size(v["bytes"]),
                        size(v["packed_input_bytes"]),
                    ]
                )
            for name, v in r["cli"].items():
                rows.append(
                    [
                        r["engine"],
                        name,
                        ms(v["seconds"]) if v else "n/a",
                        size(v["bytes"]) if v else "n/a",
                        size(r["dir_bytes"]),
                    ]
                )
            ratio = r["commit_vs_cli_zstd"]
            rows.append(
                [
                    r["engine"],
                    "**commit** (pack zstd + fsync + catalog)",
                    ms(r["commit_s"]),
                    "",
                    f"{ratio:.2f}x tar|zstd (≤ 1.5)" if ratio else "n/a",
                ]
            )
        out += [table(["engine", "what", "time", "archive", "input"], rows), ""]
    if results.get("locks"):
        r = results["locks"]
        out += [
            "### 3. Lock hand-off",
            "",
            table(
                ["writers", "acquisitions", "hand-off median", "hand-off max", "overlaps"],
                [
                    [
                        str(r["writers"]),
                        str(r["acquisitions"]),
                        ms(r["handoff_median_s"]),
                        ms(r["handoff_max_s"]),
                        str(r["overlaps"]),
                    ]
                ],
            ),
            "",
        ]
    if results.get("catalog"):
        r = results["catalog"]
        at = r["first_page_at"]
        out += [
            "### 4. Catalog scale",
            "",
            table(
                [
                    "profiles",
                    "create (median / p95)",
                    "get by name",
                    "walk all pages",
                    "first page at " + " / ".join(at),
                    "page at start / end of walk",
                ],
                [
                    [
                        str(r["profiles"]),
                        f"{r['create_median_s'] * 1000:.2f} / {r['create_p95_s'] * 1000:.2f} ms",
                        f"{r['get_by_name_median_s'] * 1000:.3f} ms",
                        f"{r['walk_all_pages_s'] * 1000:.0f} ms ({r['pages']} pages)",
                        " / ".join(f"{v * 1000:.2f} ms" for v in at.values()),
                        f"{r['page_first_s'] * 1000:.2f} / {r['page_last_s'] * 1000:.2f} ms",
                    ]
                ],
            ),
            "",
        ]
    if results.get("shared_sessions"):
        out += [
            "### 5. Shared backend (PostgreSQL + S3 on loopback) next to the embedded store",
            "",
        ]
        rows = []
        for r in results["shared_sessions"]:
            med = r["median_s"]
            rows.append(
                [
                    r["engine"],
                    ms(med["emb_warm"]),
                    ms(med["sh_warm"]),
                    f"{r['ratio_warm']:.2f}",
                    ms(med["emb_cold"]),
                    ms(med["sh_cold"]),
                    f"{r['ratio_cold']:.2f}",
                    f"{ms(med['sh_fresh_fleet'])} ({r['ratio_fresh_fleet']:.2f})",
                    f"{ms(med['sh_fresh_alone'])} ({r['ratio_fresh_alone']:.2f})",
                    ms(r["commit_embedded_s"]),
                    ms(r["commit_shared_s"]),
                    str(r["repeats"]),
                ]
            )
        out += [
            table(
                [
                    "engine",
                    "embedded warm",
                    "shared warm",
                    "warm ratio (≤ 1.10)",
                    "embedded cold",
                    "shared cold",
                    "cold ratio",
                    "fresh container, fleet engine cache (vs embedded cold)",
                    "fresh container, no engine cache",
                    "commit embedded",
                    "commit to S3",
                    "runs",
                ],
                rows,
            ),
            "",
        ]
    if results.get("shared_handoff"):
        r = results["shared_handoff"]
        out += [
            "#### Lease hand-off between two worker processes (PostgreSQL)",
            "",
            table(
                ["acquisitions", "hand-offs", "median (< 50 ms)", "max", "overlaps"],
                [
                    [
                        str(r["acquisitions"]),
                        str(r["handoffs"]),
                        ms(r["handoff_median_s"]),
                        ms(r["handoff_max_s"]),
                        str(r["overlaps"]),
                    ]
                ],
            ),
            "",
        ]
    if results.get("shared_catalog"):
        r = results["shared_catalog"]
        at = r["first_page_at"]
        out += [
            "#### Catalog scale on PostgreSQL",
            "",
            table(
                [
                    "profiles",
                    "create (median / p95)",
                    "get by name",
                    "walk all pages",
                    "first page at " + " / ".join(at),
                ],
                [
                    [
                        str(r["profiles"]),
                        f"{r['create_median_s'] * 1000:.2f} / {r['create_p95_s'] * 1000:.2f} ms",
                        f"{r['get_by_name_median_s'] * 1000:.3f} ms",
                        f"{r['walk_all_pages_s'] * 1000:.0f} ms ({r['pages']} pages)",
                        " / ".join(f"{v * 1000:.2f} ms" for v in at.values()),
                    ]
                ],
            ),
            "",
        ]
    if results.get("incremental"):
        out += [
            "### 6. Incremental state: what a commit costs (chunked next to whole archives)",
            "",
        ]
        rows = []
        for r in results["incremental"]:
            rows.append(
                [
                    f"{r['mb']:g} MB",
                    r["backend"],
                    r["format"],
                    ms(r["first_commit_s"]),
                    ms(r["cookie_commit_s"]),
                    size(r["cookie_written"]),
                    "" if r.get("cookie_sent") is None else size(r["cookie_sent"]),
                    ms(r["ten_commit_s"]),
                    size(r["ten_written"]),
                    f"{r['storage_10_vs_1']:.3f}",
                    ms(r["cold_checkout_s"]),
                ]
            )
        out += [
            table(
                [
                    "profile",
                    "backend",
                    "format",
                    "first commit",
                    "1-cookie commit",
                    "written",
                    "sent (HTTP)",
                    "10 % commit",
                    "written",
                    "storage: 10 states / 1 (≤ 1.1)",
                    "cold checkout",
                ],
                rows,
            ),
            "",
        ]
    if results.get("http"):
        r = results["http"]
        med = r["session_median_s"]
        out += [
            "### 7. The HTTP service on loopback",
            "",
            table(
                [
                    "session: embedded",
                    "through HTTP",
                    "ratio (≤ 1.05; 95 % interval)",
                    "archive",
                    "upload",
                    "download",
                    "server memory growth",
                    "GET /v1/profiles",
                ],
                [
                    [
                        ms(med["embedded"]),
                        ms(med["http"]),
                        f"{r['session_ratio']:.2f}"
                        + (
                            " ({:.2f} to {:.2f})".format(*r["session_ratio_ci95"])
                            if r.get("session_ratio_ci95")
                            else ""
                        ),
                        size(r["archive_bytes"]),
                        f"{r['upload_mb_s']:.0f} MB/s",
                        f"{r['download_mb_s']:.0f} MB/s",
                        f"{r['server_hwm_growth_mb']:.1f} MB",
                        f"{r['list_rps']:.0f} req/s",
                    ]
                ],
            ),
            "",
        ]
    if results.get("remote"):
        r = results["remote"]
        med = r["median_s"]
        out += [
            "### 8. Sessions as a service: a browser on the service next to a local one",
            "",
            f"Medians of {r['repeats']} interleaved sessions on one profile (the service on this "
            "machine, on loopback). Open: from asking for a session to a page to drive "
            "(local: `Session` opening; remote: `POST /v1/sessions` and `connect_over_cdp`). "
            "End: from the end of the block to the state committed.",
            "",
            table(
                [
                    "open: local",
                    "open: remote",
                    "ratio (95 % interval)",
                    "end: local",
                    "end: remote",
                    "ratio (95 % interval)",
                ],
                [
                    [
                        ms(med["local_open"]),
                        ms(med["remote_open"]),
                        "{:.2f} ({:.2f} to {:.2f})".format(r["open_ratio"], *r["open_ratio_ci95"]),
                        ms(med["local_end"]),
                        ms(med["remote_end"]),
                        "{:.2f} ({:.2f} to {:.2f})".format(r["end_ratio"], *r["end_ratio_ci95"]),
                    ]
                ],
            ),
            "",
        ]
    return "\n".join(out)


def block(results: dict[str, Any]) -> str:
    """The generated block's content (without the markers)."""
    return (
        "Generated by `scripts/bench_tables.py` from `scripts/bench.py --json`.\n\n"
        + report(results).strip()
    )


def replace_block(document: str, content: str) -> str:
    """``document`` with the text between :data:`BEGIN` and :data:`END` replaced."""
    start = document.find(BEGIN)
    end = document.find(END)
    if start == -1 or end == -1 or end < start:
        raise ValueError(f"the document has no block from {BEGIN!r} to {END!r}")
    head = document[: start + len(BEGIN)]
    return f"{head}\n\n{content.strip()}\n\n{document[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("results", type=Path, help="the JSON of scripts/bench.py --json")
    parser.add_argument("--doc", type=Path, default=DOC, help="the document (docs/benchmark.md)")
    parser.add_argument("--stdout", action="store_true", help="print the block, write nothing")
    args = parser.parse_args(argv)
    content = block(json.loads(args.results.read_text("utf-8")))
    if args.stdout:
        sys.stdout.write(content + "\n")
        return 0
    document = args.doc.read_text("utf-8")
    args.doc.write_text(replace_block(document, content), "utf-8")
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
