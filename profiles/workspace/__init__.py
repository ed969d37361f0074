"""This machine's side of a store: writer locks (:mod:`.locks`) and the leases that fence
them (:mod:`.leases`), unpacked working copies (:mod:`.working_copies`) and scratch space
(:mod:`.scratch`)."""
