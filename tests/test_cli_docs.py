"""The reference of the ``profiles`` command (docs/cli.md) agrees with the real parser
(sqlite-utils' tests/test_docs.py style), and ``scripts/setup.sh`` does what the README's
quick start says.

Every command and every option of :func:`profiles.cli.main.build_parser` must be in the
hand-written tables of docs/cli.md, and every command and option they name must exist; every
command must have help text; every exit code must be in the table and in ``profiles --help``.
The generated part of docs/cli.md (every command's ``--help``) must be what
``scripts/cli_reference.py`` writes now. The README's quick start test command must be the
one ``.ci/run`` runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

import pytest

from profiles.cli.main import EPILOG, EXIT_CODES, build_parser
from profiles.errors import ProfileError

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CLI_DOC = ROOT / "docs" / "cli.md"
CI = ROOT / ".ci" / "run"
SETUP = ROOT / "scripts" / "setup.sh"

GLOBAL = {"--json", "--home", "--catalog", "--blobs", "--max-profiles", "-v", "--verbose"}
HELP = {"-h", "--help"}


def _load_cli_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cli_reference", ROOT / "scripts" / "cli_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli_reference = _load_cli_reference()


class CLI_DOC_TEXT:
    value: str | None = None


def _hand_written() -> str:
    """The hand-written part of docs/cli.md: everything before the generated reference."""
    text = CLI_DOC_TEXT.value or CLI_DOC.read_text("utf-8")
    return text.split(cli_reference.BEGIN)[0]


def _rows(section: str) -> list[list[str]]:
    """The cells of every table row of ``section`` (header and rule rows left out)."""
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or set(line) <= {"|", "-", " "}:
            continue
        # split on | that is not escaped as \|
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(cells)
    return rows


def _options(cell: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", cell))


def documented_commands() -> dict[str, set[str]]:
    """``{"snapshot create": {"--label", ...}, ...}`` from docs/cli.md's command table."""
    found: dict[str, set[str]] = {}
    for cells in _rows(_hand_written()):
        usage = cells[0].strip("`")
        if not usage.startswith("profiles "):
            continue
        words = []
        for token in usage.split()[1:]:
            if not re.fullmatch(r"[a-z][a-z-]*", token):
                break
            words.append(token)
        name = " ".join(words)
        assert name not in found, f"'profiles {name}' has two rows in docs/cli.md"
        found[name] = _options(usage)
    return found


def documented_global_options() -> set[str]:
    options: set[str] = set()
    for cells in _rows(_hand_written()):
        if cells[0].startswith("`-"):
            options |= _options(cells[0])
    return options


def parser_commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Every command and subcommand: its parser and the help its parent lists it with."""
    found: dict[str, tuple[argparse.ArgumentParser, str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = (sub, listed.get(name, ""))
                found.update(parser_commands(sub, f"{prefix}{name} "))
    return found


def _has_subcommands(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def _own_options(parser: argparse.ArgumentParser) -> list[list[str]]:
    """The option strings of each of the command's own options (not the global ones)."""
    return [
        a.option_strings
        for a in parser._actions
        if a.option_strings and not set(a.option_strings) & (GLOBAL | HELP)
    ]


def test_every_command_has_help() -> None:
    commands = parser_commands(build_parser())
    assert {"create", "list", "show", "ps", "import", "export", "cache prune", "open"} <= set(
        commands
    )
    for name, (sub, listed) in commands.items():
        assert listed.strip(), f"'profiles {name}' has no help in its parent's list"
        assert (sub.description or "").strip(), f"'profiles {name}' has no description"
        for action in sub._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"'profiles {name}': {action.dest} has no help"


def test_every_command_and_option_is_documented() -> None:
    documented = documented_commands()
    for name, (sub, _) in parser_commands(build_parser()).items():
        if _has_subcommands(sub):
            assert any(d.startswith(f"{name} ") for d in documented), name
            continue
        assert name in documented, f"'profiles {name}' has no row in docs/cli.md's table"
        for strings in _own_options(sub):
            assert set(strings) & documented[name], (
                f"'profiles {name}' {'/'.join(strings)} is missing from its docs/cli.md row"
            )


def test_the_docs_name_no_command_or_option_that_does_not_exist() -> None:
    commands = parser_commands(build_parser())
    for name, options in documented_commands().items():
        assert name in commands, f"docs/cli.md documents 'profiles {name}', which does not exist"
        sub = commands[name][0]
        real = {s for strings in _own_options(sub) for s in strings}
        assert options <= real, f"'profiles {name}': {sorted(options - real)} do not exist"


def test_the_global_options_are_documented() -> None:
    parser = build_parser()
    real = {s for a in parser._actions for s in a.option_strings} - HELP
    assert documented_global_options() == real


def test_every_exit_code_is_documented() -> None:
    table = {int(cells[0]): cells[1] for cells in _rows(_hand_written()) if cells[0].isdigit()}
    epilog = " ".join(EPILOG.split())
    for cls, code in EXIT_CODES:
        name = "other error" if cls is ProfileError else cls.__name__
        assert code in table and name.split()[0] in table[code].replace("`", ""), (code, name)
        assert f"{code} {name}" in epilog, f"exit code {code} ({name}) is not in --help"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param("| `profiles ps` |", "| `profiles ps [--all]` |", id="option-not-real"),
        pytest.param("| `profiles ps` |", "| `profiles pss` |", id="command-not-real"),
        pytest.param(" [--force]`", "`", id="option-missing"),
        pytest.param("| `profiles ps` |", "| ps |", id="command-missing"),
        pytest.param("| `--version` |", "| version |", id="global-missing"),
    ],
)
def test_the_doc_checks_catch_a_wrong_table(
    monkeypatch: pytest.MonkeyPatch, old: str, new: str
) -> None:
    """The checks above fail on a docs/cli.md with a row too many, too few, or wrong."""
    text = CLI_DOC.read_text("utf-8")
    assert old in _hand_written()
    broken = text.replace(old, new)
    monkeypatch.setattr(CLI_DOC_TEXT, "value", broken)
    failed = 0
    for check in (
        test_every_command_and_option_is_documented,
        test_the_docs_name_no_command_or_option_that_does_not_exist,
        test_the_global_options_are_documented,
    ):
        try:
            check()
        except AssertionError:
            failed += 1
    assert failed >= 1
    monkeypatch.undo()
    test_every_command_and_option_is_documented()  # and the real docs/cli.md passes


def test_the_generated_reference_is_current() -> None:
    """docs/cli.md's generated block is every command's --help as the parser gives it now."""
    text = CLI_DOC.read_text("utf-8")
    assert cli_reference.BEGIN in text and cli_reference.END in text
    assert cli_reference.current_block(text) == cli_reference.reference().strip(), (
        "docs/cli.md's generated --help reference is out of date: run"
        " .venv/bin/python scripts/cli_reference.py and commit docs/cli.md"
    )


def test_the_generated_reference_covers_every_command() -> None:
    block = cli_reference.current_block(CLI_DOC.read_text("utf-8"))
    for name in ["", *parser_commands(build_parser())]:
        heading = f"### `profiles {name}`" if name else "### `profiles`"
        assert f"\n{heading}\n" in f"\n{block}\n", f"no --help of 'profiles {name}'"


def test_the_quick_start_is_what_ci_runs() -> None:
    """The README's quick start: two commands, the second the test command .ci/run runs."""
    readme = README.read_text("utf-8")
    start = readme.index("\n## Quick start\n")
    block = readme[readme.index("```sh\n", start) + 6 :]
    commands = [line.split("#")[0].strip() for line in block[: block.index("```")].splitlines()]
    assert commands == [
        "./scripts/setup.sh && .venv/bin/python scripts/quickstart.py",
        ".venv/bin/python -m pytest",
    ]
    ci_commands = [line.strip() for line in CI.read_text("utf-8").splitlines()]
    assert commands[1] in ci_commands


# ---------------------------------------------------------------------------- scripts/setup.sh


def test_setup_answers_help_and_refuses_unknown_arguments() -> None:
    for flag in ("--help", "-h"):
        shown = subprocess.run(
            ["bash", str(SETUP), flag], capture_output=True, text=True, check=False
        )
        assert shown.returncode == 0 and shown.stdout.startswith("usage: scripts/setup.sh")
        assert "apt-get" in shown.stdout and ".venv" in shown.stdout and not shown.stderr
    bad = subprocess.run(
        ["bash", str(SETUP), "--frobnicate"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "--frobnicate" in bad.stderr and "usage:" in bad.stderr
    assert not bad.stdout


def test_setup_reports_what_it_set_up(tmp_path: Path) -> None:
    """The real script, in a copy of the checkout whose .venv/bin/python skips pip (no
    network, no change to the real venv) and with browsers on PATH (no apt-get)."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(SETUP, checkout / "scripts" / "setup.sh")
    venv_bin = checkout / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "pip $*" >> "$0.log"; exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("chromium", "firefox-esr", "python3"):
        (tools / tool).write_text("#!/bin/sh\nexit 0\n")
    for path in [venv_bin / "python", *tools.iterdir()]:
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:/usr/bin:/bin", "CI": "true"}
    done = subprocess.run(
        ["bash", str(checkout / "scripts" / "setup.sh")],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and not done.stderr
    python, playwright = sys.version.split()[0], version("playwright")
    assert done.stdout.splitlines()[-1] == f"setup: done (python {python}, playwright {playwright})"
    assert (venv_bin / "python.log").read_text().count("pip -m pip install") == 2
