"""Every runtime dependency pyproject.toml declares is used: imported by driver/ or
profiles/. A declared dependency that nothing imports is dead weight on every install (and
a promise the code does not keep); remove it, or write down why it must stay here."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Distribution name -> the module it is imported as, where the two differ.
IMPORT_NAME = {
    "psycopg-pool": "psycopg_pool",
    "python-multipart": "python_multipart",
}


def _imported() -> set[str]:
    found: set[str] = set()
    for package in ("driver", "profiles"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found


def test_every_declared_dependency_is_imported() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    imported = _imported()
    unused = []
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower()
        module = IMPORT_NAME.get(name, name.replace("-", "_"))
        if module not in imported:
            unused.append(name)
    assert not unused, f"declared in pyproject.toml but imported nowhere: {unused}"
