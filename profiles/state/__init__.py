"""A profile's state: what of an engine's user-data-dir is identity (:mod:`.rules`), how it
is stored (chunked states: :mod:`.chunked`, :mod:`.manifest`; whole archives:
:mod:`.archive`), and reading it safely when it came from a stranger (:mod:`.tar_guard`,
:mod:`.untrusted_sqlite`, :mod:`.inspection`)."""
