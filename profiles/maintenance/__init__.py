"""Work on a whole store rather than a session: moving it to another backend
(:mod:`.transfer`)."""
