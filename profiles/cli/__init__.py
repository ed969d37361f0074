"""The ``profiles`` command (:func:`main`); a module per command group, each with its
handlers, their options and ``add_commands(sub)``: the profile records (:mod:`.records`),
snapshots (:mod:`.snapshots`), what only looks (:mod:`.info`: audit, archetypes, ps), the
store as a whole (:mod:`.upkeep`: sync, transfer, gc, migrate, verify) and a profile's state
(:mod:`.state`: cache prune, import, export, open; the browser session itself runs in
:mod:`.session`, loaded only then). What they share: the options and store opening
(:mod:`.common`) and what is printed (:mod:`.output`). :mod:`.main` assembles the parser,
runs a command and maps errors to exit codes."""

from profiles.cli.main import main

__all__ = ["main"]
