"""Caches that belong to a browser build, not to a profile: kept on this machine
(:mod:`.cache`) and shared by a fleet through the backend (:mod:`.fleet`)."""
