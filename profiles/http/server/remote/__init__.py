"""Sessions as a service: the browsers ``profiles serve`` runs for its clients
(:mod:`.manager` the registry and caps, :mod:`.runner` one browser on the session
lifecycle, :mod:`.cdp_proxy` the clients' CDP connections, :mod:`.limits` the caps)."""
