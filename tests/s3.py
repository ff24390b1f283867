"""A real S3 API for tests: moto's server, in this process, on a free loopback port.

A test module that needs one declares ``pytest_plugins = ["tests.s3"]`` and asks for
``s3`` (an ``S3`` with an empty bucket of its own, the ``AWS_*`` variables pointing at the
server, and the server's request log and fault hook) or ``s3_server`` (the session's
``MotoS3``). Like AWS, the server checks signatures: an IAM user with an access key is
created while moto still lets requests in unauthenticated, then authentication is switched
on (moto's ``/moto-api/reset-auth``), so a wrong secret key is refused as S3 refuses it.

The store reaches the server the way it reaches any S3-compatible store: s3fs/botocore read
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``. The server runs
moto's WSGI app behind a small recorder: ``requests`` lists each request's method and path,
and ``fault`` (when set) may answer a request in the server's place.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

#: ``fault(method, path)`` returns (HTTP status, body) to answer in moto's place, or None
Fault = Callable[[str, str], tuple[int, bytes] | None]
REGION = "us-east-1"


@dataclass
class MotoS3:
    """moto's server with a request log and a fault hook: ``start()``, ``stop()``."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    fault: Fault | None = None
    access_key: str = ""
    secret_key: str = ""
    _server: Any = None
    _thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        """Serve on 127.0.0.1 (port chosen by the kernel), then create a user and turn
        authentication on."""
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        moto_app = DomainDispatcherApplication(create_backend_app)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
            self.requests.append((method, path))
            answer = self.fault(method, path) if self.fault else None
            if answer is None:
                return moto_app(environ, start_response)
            status, body = answer
            body = b"" if method == "HEAD" else body  # a HEAD answer has no body (RFC 9110)
            start_response(f"{status} Fault", [("Content-Type", "application/xml"),
                                               ("Content-Length", str(len(body)))])
            return [body]

        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._create_user()

    def _create_user(self) -> None:
        """An IAM user allowed everything, its access key, then signatures checked."""
        import boto3
        import requests

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="finserve")
        iam.put_user_policy(UserName="finserve", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="finserve")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10)

    def client(self) -> Any:
        """A boto3 S3 client with the user's key (for arranging tests, not for the store)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class S3:
    """One test's bucket on the session server, with the store's environment set."""

    server: MotoS3
    bucket: str

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self.server.requests

    def gets(self) -> list[str]:
        """Paths of the objects read (GET of a key, not a listing) since the log was cleared."""
        prefix = f"/{self.bucket}/"
        return [p for m, p in self.requests if m == "GET" and p.startswith(prefix)
                and len(p) > len(prefix)]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    """moto's S3 server for the whole session (see the module docstring)."""
    server = MotoS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: MotoS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """A new bucket, the ``AWS_*`` variables pointing at the server with the user's key,
    s3fs's cached clients dropped (they hold the previous test's settings), and an empty
    request log with no fault set."""
    import s3fs

    for name, value in {"AWS_ENDPOINT_URL": s3_server.endpoint,
                        "AWS_ACCESS_KEY_ID": s3_server.access_key,
                        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                        "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "FSSPEC_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"finserve-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    s3_server.requests.clear()
    s3_server.fault = None
    try:
        yield S3(s3_server, bucket)
    finally:
        s3_server.fault = None
        s3fs.S3FileSystem.clear_instance_cache()
