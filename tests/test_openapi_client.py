"""The OpenAPI document of ``profiles serve`` is typed, and a client generated from it works.

The document is read from a real server (``/openapi.json``), given to ``openapi-python-client``
(from PyPI, in the dev extras), and the generated package drives the same server: create a
profile, list profiles, upload a .tar.gz, fetch a signed download link and download the state
through it, and read a typed error.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.http_service import HttpServer

from profiles.http.server import ServerConfig, create_app

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "profiles_api_client"
# The generator parses only JSON, text and application/octet-stream bodies; the state's own
# media types are binary too (its documented way to read vendor types).
GENERATOR_CONFIG = (
    "content_type_overrides:\n"
    "  application/gzip: application/octet-stream\n"
    "  application/zstd: application/octet-stream\n"
)


def chromium_targz() -> bytes:
    """A minimal Chromium user-data-dir as .tar.gz."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in {
            "Local State": json.dumps({"seed": "generated"}).encode(),
            "Default/Preferences": b"{}",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def _document(tmp_path: Path) -> dict[str, Any]:
    document: dict[str, Any] = create_app(ServerConfig(home=tmp_path / "home")).openapi()
    return document


# ------------------------------------------------------------------ the document


def test_every_route_names_its_models_and_its_errors(tmp_path: Path) -> None:
    document = _document(tmp_path)
    text = json.dumps(document)
    assert "HTTPValidationError" not in text and 'ValidationError"' not in text
    schemas = document["components"]["schemas"]
    assert {"Profile", "Snapshot", "AuditEvent", "ErrorBody", "ProfileList"} <= set(schemas)
    assert schemas["ErrorDetail"]["required"] == ["code", "status", "message"]
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    operations = [
        (method, path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
    ]
    assert len(operations) >= 30
    for method, path, op in operations:
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        ok = [code for code in responses if code.startswith("2")]
        assert ok, where
        for code in ok:
            if code == "204" or method == "head":  # no body, by definition
                assert "content" not in responses[code], where
                continue
            content = responses[code]["content"]
            for media in content.values():
                schema = media["schema"]
                # A named model, or the bytes of a state: never an untyped object.
                assert "$ref" in schema or schema == {"type": "string", "format": "binary"}, (
                    where,
                    schema,
                )
        errors = [code for code in responses if code[0] == "4"]
        assert "429" in errors, where
        for code in errors:
            got = responses[code]["content"]["application/json"]["schema"]
            assert got == error_ref, (where, code)
        if path != "/v1/profiles/{profile_id}/complete-upload":
            assert "422" not in responses, where
        if ("{ref}" in path or "{snapshot_id}" in path) and not path.endswith("/similar"):
            assert "404" in errors, where  # (similar names of a missing name are an answer)
    complete = document["paths"]["/v1/profiles/{profile_id}/complete-upload"]["post"]
    assert complete["responses"]["422"]["content"]["application/json"]["schema"] == error_ref
    for path, form in (
        ("/v1/profiles/{ref}/upload", "UploadForm"),
        ("/v1/uploads/{token}", "PresignedUploadForm"),
    ):
        body = document["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        ref = body["content"]["multipart/form-data"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{form}"
        assert schemas[form]["properties"]["file"] == {"type": "string", "format": "binary"}
        assert "file" in schemas[form]["required"]
    put = document["paths"]["/v1/profiles/{ref}/state"]["put"]
    assert "application/octet-stream" in put["requestBody"]["content"]
    assert any(p["name"] == "x-checksum" and p["in"] == "header" for p in put["parameters"])
    created = document["paths"]["/v1/profiles"]["post"]
    assert created["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateBody"
    }
    assert created["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Profile"
    }


# ------------------------------------------------------------------ a generated client


@pytest.fixture(scope="module")
def srv(session_profile_server: HttpServer) -> HttpServer:
    """The session's profile server, through an account of this module's own."""
    return session_profile_server.with_new_account()


@pytest.fixture(scope="module")
def generated(srv: HttpServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The client ``openapi-python-client`` generates from the served /openapi.json."""
    root = tmp_path_factory.mktemp("generated")
    document = httpx.get(f"{srv.url}/openapi.json", timeout=30).raise_for_status().json()
    (root / "openapi.json").write_text(json.dumps(document))
    (root / "config.yaml").write_text(GENERATOR_CONFIG)
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(root / "openapi.json"),
            "--meta",
            "none",
            "--output-path",
            str(root / PACKAGE),
            "--config",
            str(root / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # Nothing of the document was skipped or left untyped.
    assert "warning" not in output.lower(), output
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def _api(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_a_generated_client_creates_lists_uploads_and_downloads(
    srv: HttpServer, generated: Any
) -> None:
    models = _api("models")
    create_profile = _api("api.profiles.create_profile")
    list_profiles = _api("api.profiles.list_profiles")
    get_profile = _api("api.profiles.get_profile")
    upload = _api("api.state.upload")
    download_link = _api("api.state.download_link")
    download = _api("api.state.download")
    types = _api("types")

    with generated.AuthenticatedClient(base_url=srv.url, token=srv.api_key) as client:
        created = create_profile.sync(client=client, body=models.CreateBody(name="generated"))
        assert isinstance(created, models.Profile), created
        assert created.name == "generated" and created.status == "empty"
        assert created.id.startswith("prof_") and created.checksum is None

        listed = list_profiles.sync(client=client, limit=100)
        assert isinstance(listed, models.ProfileList), listed
        assert created.id in [p.id for p in listed.data]
        assert listed.has_more is False

        archive = chromium_targz()
        form = models.UploadForm(
            file=types.File(
                payload=io.BytesIO(archive), file_name="state.tar.gz", mime_type="application/gzip"
            )
        )
        uploaded = upload.sync(ref=created.id, client=client, body=form)
        assert isinstance(uploaded, models.Profile), uploaded
        assert uploaded.status == "ready" and uploaded.browser_name == "chromium"
        assert uploaded.checksum

        link = download_link.sync(ref="generated", client=client)
        assert isinstance(link, models.DownloadLink), link
        assert link.download_url.startswith(f"{srv.url}/v1/downloads/")
        assert link.expires_in > 0

        missing = get_profile.sync(ref="no-such-profile", client=client)
        assert isinstance(missing, models.ErrorBody), missing
        assert missing.error.code == "NotFound" and missing.error.status == 404

    token = link.download_url.rsplit("/", 1)[1]
    with generated.Client(base_url=srv.url) as anonymous:  # the link is the credential
        got = download.sync_detailed(token=token, client=anonymous)
    assert got.status_code == 200
    assert got.headers["X-State-Checksum"] == uploaded.checksum
    assert got.headers["X-Checksum"] == hashlib.sha256(got.content).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(got.content), mode="r:gz") as tar:
        names = set(tar.getnames())
        local_state = tar.extractfile("Local State")
        assert local_state is not None
        assert json.loads(local_state.read()) == {"seed": "generated"}
    assert "Default/Preferences" in names
