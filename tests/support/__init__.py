"""Helpers for the tests, not tests themselves: the servers the shared backend and the HTTP
service run on (``pg_service``, ``s3_service``, ``http_service``), a store on every backend
(``backends``), synthetic profiles and child processes for the fault tests
(``storefaults``), the fleet's worker processes (``fleet``), which tests use a browser
(``browser_lane``), and waiting for a condition (``waiting``).

Test modules import them as ``from support.X import ...`` (``tests/`` is on ``sys.path``
under pytest, as the directory of the rootdir's conftest.py)."""
