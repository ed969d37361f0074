"""The profile service: what every backend answers (:mod:`.protocol`) and the one built on
a catalog and a blob store (:mod:`.catalog`). The HTTP client implements the same protocol
(:mod:`profiles.http.client`)."""
