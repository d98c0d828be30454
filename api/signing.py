"""Short-lived V4 signed URLs for uploads (PUT, bound to a content type and a size) and results.

In production the service signs as ``SIGNING_SERVICE_ACCOUNT`` through IAM (``signBlob``, with
its own access token): no key file exists. The local stack generates a throwaway key at start
(``SIGNING_KEY_FILE``) and points URLs at its own Storage endpoint, which checks them.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import google.auth
import google.auth.transport.requests
from google.cloud import storage  # type: ignore[attr-defined]
from google.oauth2 import service_account

from core.spec import parse_gs_uri
from infra.settings import Settings

GOOGLE_STORAGE = "https://storage.googleapis.com"
CONTENT_LENGTH_RANGE = "x-goog-content-length-range"


class UrlSigner:
    def __init__(self, settings: Settings, client: storage.Client) -> None:
        self._client = client
        self._endpoint = (settings.storage_public_url or GOOGLE_STORAGE).rstrip("/")
        self._upload_seconds = settings.upload_url_seconds
        self._download_seconds = settings.download_url_seconds
        self._key: service_account.Credentials | None = None
        self._account = settings.signing_service_account
        self._lock = threading.Lock()
        self._adc: Any = None
        if settings.signing_key_file:
            self._key = service_account.Credentials.from_service_account_file(str(settings.signing_key_file))  # type: ignore[no-untyped-call]

    def _signing_args(self) -> dict[str, Any]:
        if self._key is not None:
            return {"credentials": self._key}
        with self._lock:  # one token refresh at a time; the token is reused until it expires
            if self._adc is None:
                self._adc, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
            if not self._adc.valid:
                self._adc.refresh(google.auth.transport.requests.Request())
            account = self._account or getattr(self._adc, "service_account_email", None)
            return {"service_account_email": account, "access_token": self._adc.token}

    def upload(self, uri: str, content_type: str, max_bytes: int) -> tuple[str, dict[str, str], datetime]:
        """A PUT URL for ``uri`` that accepts only ``content_type`` and at most ``max_bytes``.

        Returns the URL, the headers the PUT must carry (they are signed), and the expiry.
        """
        headers = {"Content-Type": content_type, CONTENT_LENGTH_RANGE: f"0,{max_bytes}"}
        url, expires = self._sign(uri, "PUT", self._upload_seconds, headers=headers)
        return url, headers, expires

    def download(self, uri: str) -> tuple[str, datetime]:
        return self._sign(uri, "GET", self._download_seconds)

    def _sign(self, uri: str, method: str, seconds: int, **extra: Any) -> tuple[str, datetime]:
        bucket, name = parse_gs_uri(uri)
        blob = self._client.bucket(bucket).blob(name)
        expires = datetime.now(UTC) + timedelta(seconds=seconds)
        url: str = blob.generate_signed_url(
            version="v4",
            expiration=timedelta(seconds=seconds),
            method=method,
            api_access_endpoint=self._endpoint,
            **extra,
            **self._signing_args(),
        )
        return url, expires
