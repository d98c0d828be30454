"""``python -m infra.localstack.gate``: the local stack's Storage endpoint for signed URLs.

fake-gcs-server serves the XML API that signed URLs use, but it checks no signature and no
expiry. This small proxy in front of it checks what Cloud Storage checks before forwarding: the
V4 signature (against the public half of the stack's throwaway signing key), the signing
account, the expiry, the signed headers (the content type and size range of an upload), and it
answers browsers' CORS preflights the way a bucket with a CORS policy does. Errors are Cloud
Storage's XML errors, with any request text in them escaped.

The signature, expiry and declared size are checked before a byte of the body is read: a request
that is refused is answered at once and its connection closed, so an unsigned or oversized upload
costs the gate nothing. Log lines escape control characters, as the standard handler's do.
"""

from __future__ import annotations

import argparse
import binascii
import hashlib
import json
import logging
import urllib.parse
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

log = logging.getLogger("gate")
ALGORITHM = "GOOG4-RSA-SHA256"
MAX_EXPIRES = 7 * 24 * 3600
#: what http.server's own log lines escape: C0 and C1 control characters, and the backslash
_CONTROL_CHARS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]} | {ord("\\"): "\\\\"}


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="~")


def check_signature(
    method: str,
    raw_path: str,
    headers: dict[str, str],
    public_key: rsa.RSAPublicKey,
    account: str,
    now: datetime,
) -> dict[str, str]:
    """Check a V4 signed request as Cloud Storage does; returns its signed headers (lower-case).

    Raises:
        Refused: with Cloud Storage's status and error code.
    """
    path, _, query = raw_path.partition("?")
    params = urllib.parse.parse_qsl(query, keep_blank_values=True)
    given = dict(params)
    for name in (
        "X-Goog-Algorithm",
        "X-Goog-Credential",
        "X-Goog-Date",
        "X-Goog-Expires",
        "X-Goog-SignedHeaders",
    ):
        if name not in given or "X-Goog-Signature" not in given:
            raise Refused(400, "AuthenticationRequired", f"missing {name}: this is not a signed URL")
    if given["X-Goog-Algorithm"] != ALGORITHM:
        raise Refused(400, "InvalidArgument", "unsupported X-Goog-Algorithm")
    email, _, scope = given["X-Goog-Credential"].partition("/")
    if email != account:
        raise Refused(403, "AccessDenied", f"{email} may not sign for this bucket")
    try:
        signed_at = datetime.strptime(given["X-Goog-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        lifetime = int(given["X-Goog-Expires"])
    except ValueError as exc:
        raise Refused(400, "InvalidArgument", "malformed X-Goog-Date or X-Goog-Expires") from exc
    if not 1 <= lifetime <= MAX_EXPIRES:
        raise Refused(400, "InvalidArgument", "X-Goog-Expires must be 1 to 604800")
    if signed_at > now + timedelta(minutes=15):
        raise Refused(400, "RequestNotValidYet", "the URL is not valid yet")
    if now > signed_at + timedelta(seconds=lifetime):
        raise Refused(400, "ExpiredToken", "Invalid argument. The provided token has expired.")
    query_string = "&".join(sorted(f"{_quote(k)}={_quote(v)}" for k, v in params if k != "X-Goog-Signature"))
    names = given["X-Goog-SignedHeaders"].split(";")
    lower = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    missing = [n for n in names if n not in lower]
    if missing:
        raise Refused(403, "SignatureDoesNotMatch", f"the request lacks signed headers: {', '.join(missing)}")
    canonical_headers = "".join(f"{n}:{lower[n]}\n" for n in names)
    canonical = "\n".join(
        [method, path, query_string, canonical_headers, ";".join(names), "UNSIGNED-PAYLOAD"]
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    string_to_sign = "\n".join([ALGORITHM, given["X-Goog-Date"], scope, digest])
    try:
        signature = binascii.unhexlify(given["X-Goog-Signature"])
        public_key.verify(signature, string_to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise Refused(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        ) from exc
    return {n: lower[n] for n in names}


def check_length(signed: dict[str, str], length: int) -> None:
    bounds = signed.get("x-goog-content-length-range")
    if bounds is None:
        return
    low, _, high = bounds.partition(",")
    if not int(low) <= length <= int(high):
        raise Refused(400, "EntityTooLarge" if length > int(high) else "EntityTooSmall",
                      f"the body is {length} bytes; this URL accepts {low} to {high}")  # fmt: skip


def _content_length(header: str | None) -> int:
    """The declared body size; refused when it is not a plain non-negative number."""
    if header is None or not header.strip():
        return 0
    if not header.strip().isdigit() or not header.strip().isascii():
        raise Refused(400, "InvalidArgument", "Content-Length must be a non-negative number")
    return int(header.strip())


def make_handler(upstream: str, public_key: rsa.RSAPublicKey, account: str) -> type[BaseHTTPRequestHandler]:
    client = httpx.Client(base_url=upstream, timeout=60)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            # The request line and headers are the client's: no raw control characters in the log.
            log.info("%s %s", self.address_string(), (format % args).translate(_CONTROL_CHARS))

        def _cors(self) -> None:
            origin = self.headers.get("Origin")
            if origin:
                self.send_header("Access-Control-Allow-Origin", origin)
                self.send_header("Vary", "Origin")

        def _send(
            self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self._cors()
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _refuse(self, exc: Refused) -> None:
            xml = (
                "<?xml version='1.0' encoding='UTF-8'?>"
                f"<Error><Code>{escape(exc.code)}</Code><Message>{escape(exc.message)}</Message></Error>"
            )
            # The body (if any) was not read: this connection cannot carry another request.
            self.close_connection = True
            self._send(exc.status, xml.encode(), "application/xml; charset=UTF-8", {"Connection": "close"})

        def do_OPTIONS(self) -> None:
            self.send_response(200)
            self._cors()
            self.send_header("Access-Control-Allow-Methods", "GET, HEAD, PUT")
            self.send_header(
                "Access-Control-Allow-Headers", self.headers.get("Access-Control-Request-Headers", "")
            )
            self.send_header("Access-Control-Max-Age", "3600")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _proxy(self) -> None:
            try:
                length = _content_length(self.headers.get("Content-Length"))
                signed = check_signature(
                    self.command,
                    self.path,
                    dict(self.headers.items()),
                    public_key,
                    account,
                    datetime.now(UTC),
                )
                if self.command == "PUT":
                    check_length(signed, length)
            except Refused as exc:
                self._refuse(exc)
                return
            body = self.rfile.read(length) if length else b""
            bucket, _, name = urllib.parse.unquote(self.path.partition("?")[0]).lstrip("/").partition("/")
            forward = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "range")}
            # fake-gcs-server's JSON API stands in for Cloud Storage's XML API behind the check.
            if self.command == "PUT":
                resp = client.post(
                    f"/upload/storage/v1/b/{bucket}/o",
                    params={"uploadType": "media", "name": name},
                    content=body,
                    headers=forward,
                )
                resp = (
                    httpx.Response(
                        resp.status_code, content=b"", headers={"etag": resp.headers.get("etag", "")}
                    )
                    if resp.is_success
                    else resp
                )
            else:
                object_path = f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"
                resp = client.request(self.command, object_path, params={"alt": "media"}, headers=forward)
            # A partial reply must say which bytes it holds: browsers' media players refuse a 206
            # without Content-Range (an <audio> element would never play a result).
            passed = ("etag", "x-goog-generation", "content-range", "accept-ranges")
            keep = {k: v for k, v in resp.headers.items() if k.lower() in passed}
            self._send(
                resp.status_code,
                resp.content,
                resp.headers.get("content-type", "application/octet-stream"),
                keep,
            )

        do_GET = do_PUT = do_HEAD = _proxy

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.localstack.gate")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="fake-gcs-server's URL")
    parser.add_argument("--key", type=Path, required=True, help="the signing key (a service account JSON)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    info = json.loads(args.key.read_text())
    private = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    handler = make_handler(args.upstream, private.public_key(), info["client_email"])
    ThreadingHTTPServer(("127.0.0.1", args.port), handler).serve_forever()


if __name__ == "__main__":
    main()
