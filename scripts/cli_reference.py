"""Write the generated part of docs/cli.md: every ``profiles`` command's ``--help``.

    python scripts/cli_reference.py            # rewrite the block in docs/cli.md
    python scripts/cli_reference.py --check    # exit 1 if the block is out of date

The block lies between :data:`BEGIN` and :data:`END`; the text around it is written by hand.
Help is rendered 100 columns wide (as ``tests/snapshots/cli-help.txt`` is), whatever the
terminal, so the output does not depend on who runs it. ``tests/test_cli_docs.py`` fails
when the block differs from what this script writes now.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's code, not an installed copy

from profiles.cli.main import build_parser  # noqa: E402

DOC = ROOT / "docs" / "cli.md"
BEGIN = "<!-- BEGIN GENERATED: scripts/cli_reference.py (do not edit by hand) -->"
END = "<!-- END GENERATED: scripts/cli_reference.py -->"
WIDTH = "100"


@contextmanager
def _columns(width: str) -> Iterator[None]:
    """argparse wraps help to ``$COLUMNS``: pin it while rendering."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``("profiles snapshot create", parser)`` for the command and every subcommand, in the
    order ``--help`` lists them."""
    yield " ".join(("profiles", *prefix)), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))


def reference() -> str:
    """The generated block's content (without the markers)."""
    parts = [
        "Generated from the parser by `scripts/cli_reference.py`; run it after changing a",
        "command, an option or a help text.",
        "",
    ]
    with _columns(WIDTH):
        for name, parser in _commands(build_parser()):
            text = parser.format_help().rstrip("\n")
            assert "```" not in text, f"{name}: help text would end the code block"
            parts += [f"### `{name}`", "", "```text", text, "```", ""]
    return "\n".join(parts)


def replace_block(document: str, content: str) -> str:
    """``document`` with the text between :data:`BEGIN` and :data:`END` replaced."""
    start = document.find(BEGIN)
    end = document.find(END)
    if start == -1 or end == -1 or end < start:
        raise ValueError(f"the document has no block from {BEGIN!r} to {END!r}")
    head = document[: start + len(BEGIN)]
    return f"{head}\n\n{content.strip()}\n\n{document[end:]}"


def current_block(document: str) -> str:
    """The generated block of ``document`` as it is now (without the markers)."""
    start = document.index(BEGIN) + len(BEGIN)
    return document[start : document.index(END)].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="only check: exit 1 if docs/cli.md is out of date"
    )
    parser.add_argument("--doc", type=Path, default=DOC, help="the document (docs/cli.md)")
    args = parser.parse_args(argv)
    document = args.doc.read_text("utf-8")
    updated = replace_block(document, reference())
    if args.check:
        if updated != document:
            print(f"{args.doc} is out of date: run scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    if updated != document:
        args.doc.write_text(updated, "utf-8")
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
