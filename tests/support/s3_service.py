"""A real S3-compatible server on loopback for the S3 blob-store tests (no in-process mocks).

Fixtures (``tests/conftest.py`` imports them, so every test module sees them):

``s3_endpoint`` (session)
    An :class:`S3Endpoint`: endpoint URL, keys and region of the server. When
    ``PROFILES_TEST_S3_ENDPOINT`` is set (CI starts ``moto_server`` itself), that server is
    used with ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_REGION`` from the
    environment. Otherwise moto's standalone server is started in a subprocess on a free port
    of 127.0.0.1 for the session and stopped at its end. With ``CI=true`` a server that cannot
    be had fails the tests; elsewhere they skip with the reason.

    For the whole session the machine's own AWS configuration is kept out: ``AWS_CONFIG_FILE``
    and ``AWS_SHARED_CREDENTIALS_FILE`` point at files that do not exist, ``AWS_PROFILE`` and
    friends are unset, and the EC2 metadata service is disabled.
``s3_bucket`` (module)
    The name of a fresh, empty bucket on that server, emptied and removed afterwards.
``s3_env`` (function)
    The standard AWS variables (``AWS_ENDPOINT_URL``, keys, region) set for one test through
    ``monkeypatch``, so that code which builds its own client from the environment reaches
    the test server. Returns the endpoint.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ENDPOINT_VAR = "PROFILES_TEST_S3_ENDPOINT"
START_TIMEOUT = 60.0

# Variables through which the machine's own AWS setup could leak into the tests.
_FOREIGN_AWS_VARS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CA_BUNDLE",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
)


@dataclass(frozen=True)
class S3Endpoint:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str

    def client(self, **config: Any) -> S3Client:
        """A boto3 S3 client for this server, configured explicitly (close it after use)."""
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=Config(**config))

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a default boto3 session at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    @contextlib.contextmanager
    def checking_keys(self) -> Iterator[None]:
        """Make moto check access keys for a while: every key is then unknown (moto knows no
        IAM users here), so every request is refused with a 403."""
        previous = self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth(previous)

    def _reset_auth(self, value: str) -> str:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=value.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            previous: str = json.loads(response.read())["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
            return previous


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"The S3 tests need an S3-compatible server and have none: {reason}")
    pytest.skip(f"no S3-compatible server for the S3 tests: {reason}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2) as response:
            response.read()
            return True
    except urllib.error.HTTPError:
        return True  # it answered, even if not with moto's API
    except OSError:
        return False


@contextlib.contextmanager
def _moto_server(log_dir: Path) -> Iterator[str]:
    if importlib.util.find_spec("moto.server") is None:
        _unavailable("moto[server] is not installed in this environment")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / "moto_server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(url):
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                _unavailable(f"moto_server exited with {proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                _unavailable(f"moto_server did not answer on {url} within {START_TIMEOUT:.0f}s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """A real S3-compatible server on loopback (see the module docstring)."""
    nowhere = tmp_path_factory.mktemp("aws-config") / "absent"
    with pytest.MonkeyPatch.context() as mp:
        for name in _FOREIGN_AWS_VARS:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", str(nowhere))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        given = os.environ.get(ENDPOINT_VAR)
        if given:
            endpoint = S3Endpoint(
                endpoint_url=given.rstrip("/"),
                access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
                region=os.environ.get("AWS_REGION")
                or os.environ.get("AWS_DEFAULT_REGION")
                or "us-east-1",
            )
            if not _answers(endpoint.endpoint_url):
                _unavailable(f"{ENDPOINT_VAR}={given} does not answer")
            yield endpoint
            return
        with _moto_server(tmp_path_factory.mktemp("moto")) as url:
            yield S3Endpoint(
                endpoint_url=url,
                access_key_id="AKIAPROFILESTEST0001",
                secret_access_key=f"profiles-test-secret-{uuid.uuid4().hex}",
                region="us-east-1",
            )


def empty_bucket(client: S3Client, bucket: str) -> None:
    """Remove every object and unfinished upload of ``bucket``."""
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


@pytest.fixture(scope="module")
def s3_bucket(s3_endpoint: S3Endpoint) -> Iterator[str]:
    """A fresh bucket for one test module, removed at its end."""
    bucket = f"profiles-test-{uuid.uuid4().hex[:16]}"
    client = s3_endpoint.client()
    try:
        if s3_endpoint.region == "us-east-1":
            client.create_bucket(Bucket=bucket)
        else:
            client.create_bucket(
                Bucket=bucket,
                CreateBucketConfiguration={"LocationConstraint": s3_endpoint.region},  # type: ignore[typeddict-item]
            )
        yield bucket
        empty_bucket(client, bucket)
        client.delete_bucket(Bucket=bucket)
    finally:
        client.close()


@pytest.fixture
def s3_env(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    """The standard AWS variables pointing at the test server, for one test."""
    for name, value in s3_endpoint.env().items():
        monkeypatch.setenv(name, value)
    return s3_endpoint
