"""Push authentication with real crypto: RSA keys made here, certificates served from 127.0.0.1.

Tokens are signed the way Google signs a push's ID token (RS256, ``kid`` in the header) and
verified by google-auth against a certificates document shaped like Google's
``oauth2/v1/certs`` (``{key id: PEM certificate}``), so nothing here reaches the internet.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from google.auth import crypt, jwt

from core.contract import JobMessage, JobStatus
from core.lifecycle import Delivered, Ending
from core.spec import Catalog
from gpu_service.app import create_app
from gpu_service.auth import (
    BadToken,
    CertsUnavailable,
    MissingToken,
    PushAuthConfigError,
    PushAuthError,
    PushVerifier,
)
from gpu_service.pool import ModelPool
from infra.settings import Settings

AUDIENCE = "https://gpu-service-123.europe-west4.run.app"
PUSH_ACCOUNT = "pubsub-push-invoker@demo-gpu-jobs.iam.gserviceaccount.com"
KID = "key-1"


def _pem_private(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _self_signed_pem(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "push-auth-test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def google_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class _CertsServer(ThreadingHTTPServer):
    documents: dict[str, bytes]
    cache_control: dict[str, str]
    hits: dict[str, int]


class _CertsHandler(BaseHTTPRequestHandler):
    server: _CertsServer

    def do_GET(self) -> None:
        self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        body = self.server.documents.get(self.path)
        if body is None:
            self.send_error(500)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path in self.server.cache_control:
            self.send_header("Cache-Control", self.server.cache_control[self.path])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def certs_server(google_key: rsa.RSAPrivateKey) -> Iterator[_CertsServer]:
    """/certs holds the key's certificate under KID (kept an hour, as Google's say), anything
    else is a 500; ``hits`` counts the GETs per path."""
    server = _CertsServer(("127.0.0.1", 0), _CertsHandler)
    server.documents = {"/certs": json.dumps({KID: _self_signed_pem(google_key)}).encode()}
    server.cache_control = {"/certs": "public, max-age=3600, must-revalidate, no-transform"}
    server.hits = {}
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="certs", daemon=True
    )
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def certs_base(certs_server: _CertsServer) -> str:
    """http://127.0.0.1:PORT of the certificates server."""
    return f"http://127.0.0.1:{certs_server.server_address[1]}"


@pytest.fixture
def verifier(certs_base: str) -> PushVerifier:
    return PushVerifier(
        audience=AUDIENCE,
        service_account=PUSH_ACCOUNT,
        certs_url=f"{certs_base}/certs",
        clock_skew_seconds=10,
    )


def claims(*, iat_in: int = 0, exp_in: int = 3600, **overrides: Any) -> dict[str, Any]:
    """What Google puts in a push's ID token, issued ``iat_in`` and expiring ``exp_in`` seconds from
    now (read when the token is made, not when the tests are collected)."""
    now = int(time.time())
    base = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "108234567890123456789",
        "sub": "108234567890123456789",
        "email": PUSH_ACCOUNT,
        "email_verified": True,
        "iat": now + iat_in,
        "exp": now + exp_in,
    }
    base.update(overrides)
    return base


def sign(key: rsa.RSAPrivateKey, payload: dict[str, Any], kid: str = KID) -> str:
    signer = crypt.RSASigner.from_string(_pem_private(key), key_id=kid)
    return jwt.encode(signer, payload).decode()


def bearer(token: str) -> str:
    return f"Bearer {token}"


# -- the verifier --------------------------------------------------------------------------------


def test_a_good_token_passes(verifier: PushVerifier, google_key: rsa.RSAPrivateKey) -> None:
    verified = verifier.verify(bearer(sign(google_key, claims())))
    assert verified["email"] == PUSH_ACCOUNT
    assert verified["aud"] == AUDIENCE


def test_the_plain_issuer_and_a_lower_case_scheme_pass(
    verifier: PushVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    verified = verifier.verify("bearer " + sign(google_key, claims(iss="accounts.google.com")))
    assert (verified["iss"], verified["email"]) == ("accounts.google.com", PUSH_ACCOUNT)


def test_expiry_allows_the_clock_skew_and_no_more(
    verifier: PushVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    now = int(time.time())  # the verifier allows 10 s of skew
    within = verifier.verify(bearer(sign(google_key, claims(iat=now - 3600, exp=now - 3))))
    assert (within["email"], within["exp"]) == (PUSH_ACCOUNT, now - 3)
    with pytest.raises(BadToken) as refused:
        verifier.verify(bearer(sign(google_key, claims(iat=now - 3600, exp=now - 40))))
    assert refused.value.reason == "token expired"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "https://elsewhere.run.app"}, "wrong audience"),
        ({"aud": AUDIENCE + "/push/transcribe"}, "wrong audience"),
        ({"email": "someone@demo-gpu-jobs.iam.gserviceaccount.com"}, "wrong service account"),
        ({"email": None}, "wrong service account"),
        ({"email_verified": False}, "email not verified"),
        ({"email_verified": "true"}, "email not verified"),
        ({"iss": "https://securetoken.google.com/demo"}, "wrong issuer"),
        ({"iat_in": -7200, "exp_in": -60}, "token expired"),
        ({"iat_in": 600, "exp_in": 4200}, "token used before it was issued"),
    ],
    ids=[
        "wrong-audience",
        "endpoint-url-audience",
        "wrong-email",
        "no-email",
        "unverified-email",
        "email-verified-as-string",
        "wrong-issuer",
        "expired",
        "issued-in-the-future",
    ],
)
def test_a_bad_claim_is_refused(
    verifier: PushVerifier, google_key: rsa.RSAPrivateKey, overrides: dict[str, Any], reason: str
) -> None:
    with pytest.raises(BadToken) as refused:
        verifier.verify(bearer(sign(google_key, claims(**overrides))))
    assert refused.value.reason == reason
    assert refused.value.status_code == 403


def test_a_token_signed_by_another_key_is_refused(
    verifier: PushVerifier, other_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(BadToken) as refused:
        verifier.verify(bearer(sign(other_key, claims())))
    assert refused.value.reason == "bad signature"


def test_a_token_naming_an_unknown_key_is_refused(
    verifier: PushVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(BadToken) as refused:
        verifier.verify(bearer(sign(google_key, claims(), kid="key-2")))
    assert refused.value.reason == "signed by an unknown key"


def test_a_token_with_its_payload_swapped_is_refused(
    verifier: PushVerifier, google_key: rsa.RSAPrivateKey
) -> None:
    header, _, signature = sign(google_key, claims()).split(".")
    _, forged, _ = sign(google_key, claims(email="attacker@example.com")).split(".")
    with pytest.raises(BadToken) as refused:
        verifier.verify(bearer(f"{header}.{forged}.{signature}"))
    assert refused.value.reason == "bad signature"


@pytest.mark.parametrize(
    "token", ["not-a-jwt", "a.b", "e30.e30.e30.e30"], ids=["no-dots", "two-parts", "four-parts"]
)
def test_something_that_is_not_a_jwt_is_refused_without_echoing_it(
    verifier: PushVerifier, token: str
) -> None:
    with pytest.raises(BadToken) as refused:
        verifier.verify(bearer(token))
    assert refused.value.reason == "malformed token"
    assert token not in str(refused.value)
    assert refused.value.__cause__ is None


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing Authorization header"),
        ("", "missing Authorization header"),
        ("Basic dXNlcjpwYXNz", "Authorization is not a Bearer token"),
        ("eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "Authorization is not a Bearer token"),
        ("Bearer ", "empty Bearer token"),
    ],
    ids=["missing", "empty", "basic", "no-scheme", "empty-bearer"],
)
def test_a_request_without_a_bearer_token_is_unauthenticated(
    verifier: PushVerifier, header: str | None, reason: str
) -> None:
    with pytest.raises(MissingToken) as refused:
        verifier.verify(header)
    assert refused.value.reason == reason
    assert refused.value.status_code == 401


def test_unreachable_certificates_are_not_the_pushers_fault(
    certs_base: str, google_key: rsa.RSAPrivateKey
) -> None:
    verifier = PushVerifier(audience=AUDIENCE, service_account=PUSH_ACCOUNT, certs_url=f"{certs_base}/gone")
    with pytest.raises(CertsUnavailable) as refused:
        verifier.verify(bearer(sign(google_key, claims())))
    assert refused.value.status_code == 503
    assert isinstance(refused.value, PushAuthError)


# -- the certificates are kept for their HTTP cache lifetime ----------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _serve(server: _CertsServer, path: str, keys: dict[str, rsa.RSAPrivateKey], cache_control: str) -> str:
    server.documents[path] = json.dumps({kid: _self_signed_pem(k) for kid, k in keys.items()}).encode()
    server.cache_control[path] = cache_control
    server.hits[path] = 0
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_many_pushes_fetch_the_certificates_once_while_their_max_age_lasts(
    certs_server: _CertsServer, google_key: rsa.RSAPrivateKey
) -> None:
    url = _serve(certs_server, "/certs-kept", {KID: google_key}, "public, max-age=600")
    clock = FakeClock()
    verifier = PushVerifier(audience=AUDIENCE, service_account=PUSH_ACCOUNT, certs_url=url, clock=clock)
    for _ in range(20):
        verifier.verify(bearer(sign(google_key, claims())))
    assert certs_server.hits["/certs-kept"] == 1
    clock.now += 601  # expired: fetched again, then kept again
    for _ in range(5):
        verifier.verify(bearer(sign(google_key, claims())))
    assert certs_server.hits["/certs-kept"] == 2


def test_certificates_marked_no_store_are_fetched_for_each_push(
    certs_server: _CertsServer, google_key: rsa.RSAPrivateKey
) -> None:
    url = _serve(certs_server, "/certs-no-store", {KID: google_key}, "no-store")
    verifier = PushVerifier(audience=AUDIENCE, service_account=PUSH_ACCOUNT, certs_url=url)
    for _ in range(3):
        verifier.verify(bearer(sign(google_key, claims())))
    assert certs_server.hits["/certs-no-store"] == 3


def test_a_rotated_key_is_found_by_fetching_again_but_an_unknown_one_does_not_refetch_each_push(
    certs_server: _CertsServer, google_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    url = _serve(certs_server, "/certs-rotating", {KID: google_key}, "max-age=3600")
    clock = FakeClock()
    verifier = PushVerifier(audience=AUDIENCE, service_account=PUSH_ACCOUNT, certs_url=url, clock=clock)
    verifier.verify(bearer(sign(google_key, claims())))
    # Google rotates: the new key is published; a token signed with it arrives a while later.
    _serve(certs_server, "/certs-rotating", {KID: google_key, "key-2": other_key}, "max-age=3600")  # hits = 0
    clock.now += 60
    verifier.verify(bearer(sign(other_key, claims(), kid="key-2")))
    assert certs_server.hits["/certs-rotating"] == 1
    # A forger naming keys that do not exist cannot make every push fetch the certificates.
    for _ in range(5):
        with pytest.raises(BadToken, match="unknown key"):
            verifier.verify(bearer(sign(other_key, claims(), kid="key-9")))
    assert certs_server.hits["/certs-rotating"] == 1


def test_a_failed_fetch_is_not_kept(certs_server: _CertsServer, google_key: rsa.RSAPrivateKey) -> None:
    verifier = PushVerifier(
        audience=AUDIENCE, service_account=PUSH_ACCOUNT, certs_url=_serve(certs_server, "/later", {}, "")
    )
    certs_server.documents.pop("/later")
    with pytest.raises(CertsUnavailable):
        verifier.verify(bearer(sign(google_key, claims())))
    _serve(certs_server, "/later", {KID: google_key}, "max-age=60")
    assert verifier.verify(bearer(sign(google_key, claims())))["email"] == PUSH_ACCOUNT


# -- settings ------------------------------------------------------------------------------------


def settings(**values: Any) -> Settings:
    """Settings from these values alone: emulator hosts and push settings default to unset."""
    base: dict[str, Any] = {
        "pubsub_emulator_host": None,
        "firestore_emulator_host": None,
        "push_auth": "auto",
        "push_audience": None,
        "push_service_account": None,
    }
    return Settings(**(base | values))


@pytest.mark.parametrize(
    ("values", "enabled"),
    [
        ({}, True),
        ({"pubsub_emulator_host": "127.0.0.1:8085"}, False),
        ({"firestore_emulator_host": "127.0.0.1:8080"}, False),
        ({"push_auth": "off"}, False),
        ({"push_auth": "oidc", "pubsub_emulator_host": "127.0.0.1:8085"}, True),
    ],
    ids=[
        "auto-in-production",
        "auto-with-pubsub-emulator",
        "auto-with-firestore-emulator",
        "off",
        "oidc-forced",
    ],
)
def test_auto_is_on_in_production_and_off_against_the_emulators(
    values: dict[str, Any], enabled: bool
) -> None:
    assert settings(**values).push_auth_enabled is enabled


def test_push_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSH_AUTH", "oidc")
    monkeypatch.setenv("PUSH_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("PUSH_SERVICE_ACCOUNT", PUSH_ACCOUNT)
    monkeypatch.setenv("PUSH_CERTS_URL", "http://127.0.0.1:1/certs")
    monkeypatch.setenv("PUSH_CLOCK_SKEW_SECONDS", "30")
    verifier = PushVerifier.from_settings(Settings())
    assert verifier is not None
    assert (verifier.audience, verifier.service_account) == (AUDIENCE, PUSH_ACCOUNT)
    assert (verifier.certs_url, verifier.clock_skew_seconds) == ("http://127.0.0.1:1/certs", 30)


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({}, "PUSH_AUDIENCE and PUSH_SERVICE_ACCOUNT"),
        ({"push_audience": AUDIENCE}, "PUSH_SERVICE_ACCOUNT"),
        ({"push_service_account": PUSH_ACCOUNT}, "PUSH_AUDIENCE"),
        (
            {"push_auth": "oidc", "pubsub_emulator_host": "127.0.0.1:8085"},
            "PUSH_AUDIENCE and PUSH_SERVICE_ACCOUNT",
        ),
    ],
    ids=["neither", "no-account", "no-audience", "oidc-with-emulators"],
)
def test_verification_without_what_to_check_against_refuses_to_start(
    values: dict[str, Any], missing: str
) -> None:
    with pytest.raises(PushAuthConfigError, match=f"but {missing} not set"):
        PushVerifier.from_settings(settings(**values))


def test_off_in_production_is_said_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gpu_service.auth"):
        assert PushVerifier.from_settings(settings(push_auth="off")) is None
    assert "NOT verified" in caplog.text


def test_off_against_the_emulators_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gpu_service.auth"):
        assert PushVerifier.from_settings(settings(pubsub_emulator_host="127.0.0.1:8085")) is None
    assert caplog.text == ""


# -- the app -------------------------------------------------------------------------------------


class StubWorker:
    """What create_app reads from a Worker; process() records the messages that reached it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.model_copy(update={"redrive": False})
        self.catalog = Catalog(specs={})
        self.pool = ModelPool(self.catalog)
        self.draining = threading.Event()
        self.handled: list[JobMessage] = []

    def process(self, message: JobMessage) -> Delivered:
        self.handled.append(message)
        return Ending(JobStatus.SUCCEEDED)


def envelope(job: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(job or {"jobId": "job-1", "pipeline": "transcribe"}).encode()
    return {
        "message": {"data": base64.b64encode(data).decode(), "messageId": "m-1"},
        "subscription": "projects/demo-gpu-jobs/subscriptions/jobs-transcribe",
    }


@pytest.fixture
def production(certs_base: str) -> Settings:
    return settings(
        push_audience=AUDIENCE,
        push_service_account=PUSH_ACCOUNT,
        push_certs_url=f"{certs_base}/certs",
        preload_pipelines=False,
    )


@pytest.fixture
def served(production: Settings) -> Iterator[tuple[TestClient, StubWorker]]:
    worker = StubWorker(production)
    with TestClient(create_app(worker)) as client:
        yield client, worker


def test_the_app_lets_a_good_token_through_to_the_worker(
    served: tuple[TestClient, StubWorker], google_key: rsa.RSAPrivateKey
) -> None:
    client, worker = served
    token = sign(google_key, claims())
    answer = client.post("/push/transcribe", json=envelope(), headers={"Authorization": bearer(token)})
    assert answer.status_code == 200, answer.text
    assert [m.job_id for m in worker.handled] == ["job-1"]


def test_the_app_decodes_only_after_verifying(
    served: tuple[TestClient, StubWorker], google_key: rsa.RSAPrivateKey
) -> None:
    # A poison body is answered 400 only once the token passed; with a bad token, 403 first.
    client, worker = served
    good, bad = sign(google_key, claims()), sign(google_key, claims(aud="https://elsewhere.run.app"))
    assert (
        client.post("/push/transcribe", content=b"{}", headers={"Authorization": bearer(good)}).status_code
        == 400
    )
    assert (
        client.post("/push/transcribe", content=b"{}", headers={"Authorization": bearer(bad)}).status_code
        == 403
    )
    assert worker.handled == []


@pytest.mark.parametrize(
    ("authorization", "status", "error"),
    [
        (None, 401, "missing Authorization header"),
        ("Basic dXNlcjpwYXNz", 401, "Authorization is not a Bearer token"),
        ("Bearer not-a-jwt", 403, "malformed token"),
        ("other-key", 403, "bad signature"),
        ("wrong-email", 403, "wrong service account"),
    ],
    ids=["missing", "basic", "not-a-jwt", "other-key", "wrong-email"],
)
def test_the_app_refuses_a_bad_push_and_touches_no_job(
    served: tuple[TestClient, StubWorker],
    other_key: rsa.RSAPrivateKey,
    google_key: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
    authorization: str | None,
    status: int,
    error: str,
) -> None:
    client, worker = served
    tokens = {"other-key": sign(other_key, claims()), "wrong-email": sign(google_key, claims(email="x@y.z"))}
    if authorization in tokens:
        authorization = bearer(tokens[authorization])
    headers = {} if authorization is None else {"Authorization": authorization}
    with caplog.at_level(logging.DEBUG):
        answer = client.post("/push/transcribe/clip", json=envelope(), headers=headers)
    assert (answer.status_code, answer.json()) == (status, {"error": error})
    assert worker.handled == []
    assert "push refused on /push/transcribe/clip" in caplog.text
    for token in tokens.values():
        assert token not in caplog.text and token.split(".")[1] not in caplog.text


def test_the_app_takes_unsigned_pushes_from_the_emulator() -> None:
    worker = StubWorker(settings(pubsub_emulator_host="127.0.0.1:8085", preload_pipelines=False))
    with TestClient(create_app(worker)) as client:
        assert client.post("/push/transcribe", json=envelope()).status_code == 200
    assert len(worker.handled) == 1


def test_the_app_will_not_start_in_production_without_audience_and_account() -> None:
    with pytest.raises(PushAuthConfigError, match="PUSH_AUDIENCE and PUSH_SERVICE_ACCOUNT"):
        create_app(StubWorker(settings(preload_pipelines=False)))
