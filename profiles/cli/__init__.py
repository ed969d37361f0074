"""The ``profiles`` command (:func:`main`); one module per job: the parser and the record
commands (:mod:`.main`), browser sessions from a shell (:mod:`.session`)."""

from profiles.cli.main import main

__all__ = ["main"]
