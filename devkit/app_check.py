"""Firebase App Check tokens with real crypto: an RSA key made here, its public half served as a
JWK set from 127.0.0.1, and tokens shaped like App Check's (RS256, ``typ: JWT``, ``kid``; issuer
``https://firebaseappcheck.googleapis.com/<project number>``, audience ``projects/<number>`` and
``projects/<id>``, subject the app id), so that firebase-admin verifies them without the internet."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

PROJECT_NUMBER = "123456789012"
APP_ID = "1:123456789012:web:0123456789abcdef"


@dataclass
class AppCheckKeys:
    project_id: str
    url: str
    key: rsa.RSAPrivateKey
    kid: str = "app-check-key-1"
    fetches: list[str] = field(default_factory=list)

    def token(self, *, key: rsa.RSAPrivateKey | None = None, kid: str | None = None, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": f"https://firebaseappcheck.googleapis.com/{PROJECT_NUMBER}",
            "sub": APP_ID,
            "aud": [f"projects/{PROJECT_NUMBER}", f"projects/{self.project_id}"],
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        headers = {"typ": "JWT", "kid": kid or self.kid}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers=headers)


@contextmanager
def serve_app_check_keys(project_id: str) -> Iterator[AppCheckKeys]:
    """App Check's JWK set for a new key, at ``keys.url`` on 127.0.0.1."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = AppCheckKeys(project_id=project_id, url="", key=key)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": keys.kid, "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            keys.fetches.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="app-check-keys", daemon=True
    )
    thread.start()
    keys.url = f"http://127.0.0.1:{server.server_address[1]}/v1/jwks"
    try:
        yield keys
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
