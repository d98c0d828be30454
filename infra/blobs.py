"""Cloud Storage edge: object metadata, downloads and result uploads."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.request import getproxies

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]

from core.errors import RetryableError
from core.spec import parse_gs_uri
from infra import roundtrips
from infra.errors import TRANSIENT_GOOGLE_ERRORS
from infra.settings import Settings

_TRANSIENT = TRANSIENT_GOOGLE_ERRORS


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    name: str
    size: int
    content_type: str | None
    generation: str
    metadata: dict[str, str] = field(default_factory=dict)
    md5_hash: str | None = None
    crc32c: str | None = None

    @property
    def content_hash(self) -> str | None:
        """Storage's hash of the content (MD5, or CRC32C for composite objects, which have none)."""
        if self.md5_hash:
            return f"md5:{self.md5_hash}"
        return f"crc32c:{self.crc32c}" if self.crc32c else None

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


_CONTENT_RANGE = re.compile(r"bytes \d+-\d+/(\d+)")


class _HeaderBlob(storage.Blob):  # type: ignore[misc]
    """A blob that also keeps the object's size from a ranged download's ``Content-Range`` (the
    library keeps its type, generation and hashes already): a range read then describes the
    object too, and no metadata request is needed."""

    def _extract_headers_from_download(self, response: object) -> None:
        super()._extract_headers_from_download(response)
        headers = getattr(response, "headers", {})
        m = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", "") or "")
        if m:
            self._properties["size"] = m[1]


def storage_client(settings: Settings) -> storage.Client:
    if settings.storage_emulator_host:
        # The client library honours STORAGE_EMULATOR_HOST; it needs no credentials there.
        os.environ.setdefault("STORAGE_EMULATOR_HOST", settings.storage_emulator_host)
        client = storage.Client(project=settings.google_cloud_project, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    else:
        client = storage.Client(project=settings.google_cloud_project)
    _settle_environment(client._http)
    return client


def _settle_environment(session: Any) -> None:
    """requests reads the environment (proxies, CA bundle) and looks for ``~/.netrc`` again on
    every request; without proxies or a netrc file, what it finds there is read here once."""
    if (
        getproxies()
        or os.environ.get("NETRC")
        or any((Path.home() / n).exists() for n in (".netrc", "_netrc"))
    ):
        return
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and session.verify is True:
        session.verify = bundle
    session.trust_env = False


class BlobStore:
    def __init__(self, client: storage.Client) -> None:
        self._client = client

    def stat(self, uri: str) -> ObjectInfo | None:
        """Metadata of the object at ``uri``, or ``None`` if it does not exist."""
        bucket, name = parse_gs_uri(uri)
        roundtrips.note("storage")
        try:
            blob = self._client.bucket(bucket).get_blob(name)
        except gexc.NotFound:
            return None
        except _TRANSIENT as exc:
            raise RetryableError(f"Cloud Storage unavailable reading {uri}: {exc}") from exc
        if blob is None:
            return None
        return ObjectInfo(
            bucket=bucket,
            name=name,
            size=int(blob.size or 0),
            content_type=blob.content_type,
            generation=str(blob.generation),
            metadata=dict(blob.metadata or {}),
            md5_hash=blob.md5_hash,
            crc32c=blob.crc32c,
        )

    @contextmanager
    def _reading(self, uri: str, generation: str | None) -> Iterator[storage.Blob]:
        """The blob of ``uri`` (exactly ``generation`` when given), with Storage's errors mapped:
        ``FileNotFoundError`` when that object (generation) does not exist, ``RetryableError``
        when Storage is unavailable."""
        bucket, name = parse_gs_uri(uri)
        blob = self._client.bucket(bucket).blob(name, generation=int(generation) if generation else None)
        roundtrips.note("storage")
        try:
            yield blob
        except gexc.NotFound as exc:
            raise FileNotFoundError(uri) from exc
        except _TRANSIENT as exc:
            raise RetryableError(f"Cloud Storage unavailable reading {uri}: {exc}") from exc

    def read_head(self, uri: str, nbytes: int, generation: str | None = None, *, start: int = 0) -> bytes:
        """The first ``nbytes`` of the object from ``start`` (a range read), of ``generation``
        when given.

        Raises:
            FileNotFoundError: the object (that generation) does not exist.
            RetryableError: Storage is unavailable.
        """
        with self._reading(uri, generation) as blob:
            try:
                data: bytes = blob.download_as_bytes(start=start, end=start + nbytes - 1)
            except gexc.RequestRangeNotSatisfiable:
                return b""  # an empty object
        return data

    def read_start(self, uri: str, nbytes: int) -> tuple[ObjectInfo, bytes] | None:
        """The object's first ``nbytes`` and its metadata (size, type, generation, hashes) from
        one range read, or ``None`` if it does not exist. The bytes and the metadata are of the
        same generation: the one the read was answered from. (An empty object has no range to
        read: its metadata is read on its own.)

        Raises:
            RetryableError: Storage is unavailable.
        """
        bucket, name = parse_gs_uri(uri)
        blob = _HeaderBlob(name, self._client.bucket(bucket))
        roundtrips.note("storage")
        try:
            data: bytes = blob.download_as_bytes(start=0, end=max(nbytes, 1) - 1, checksum=None)
        except gexc.NotFound:
            return None
        except gexc.RequestRangeNotSatisfiable:
            info = self.stat(uri)
            return None if info is None else (info, b"")
        except _TRANSIENT as exc:
            raise RetryableError(f"Cloud Storage unavailable reading {uri}: {exc}") from exc
        if blob.generation is None or blob.size is None:
            # A server that does not describe the object in a range read's headers.
            info = self.stat(uri)
            if info is None:
                return None
            return info, self.read_head(uri, nbytes, info.generation)
        info = ObjectInfo(
            bucket=bucket,
            name=name,
            size=int(blob.size),
            content_type=blob.content_type,
            generation=str(blob.generation),
            md5_hash=blob.md5_hash,
            crc32c=blob.crc32c,
        )
        return info, data[:nbytes]

    def stream(self, uri: str, chunk_bytes: int = 4 * 2**20) -> tuple[ObjectInfo, Iterator[bytes]]:
        """The object's metadata and its bytes as range reads of ``chunk_bytes``, all of the
        generation seen first: a large file can be answered without holding it in memory.

        Raises:
            FileNotFoundError: the object does not exist (later: that generation was replaced).
            RetryableError: Storage is unavailable.
        """
        info = self.stat(uri)
        if info is None:
            raise FileNotFoundError(uri)

        def chunks() -> Iterator[bytes]:
            for start in range(0, info.size, chunk_bytes):
                with self._reading(uri, info.generation) as blob:
                    data: bytes = blob.download_as_bytes(
                        start=start, end=min(start + chunk_bytes, info.size) - 1
                    )
                yield data

        return info, chunks()

    def download(self, uri: str, dest: Path, generation: str | None = None) -> Path:
        """Download ``uri`` (exactly ``generation`` when given) to ``dest``.

        Raises:
            FileNotFoundError: the object (that generation) does not exist.
            RetryableError: Storage is unavailable.
        """
        try:
            with self._reading(uri, generation) as blob:
                blob.download_to_filename(str(dest))
        except FileNotFoundError:
            dest.unlink(missing_ok=True)
            raise
        return dest

    def upload(
        self,
        src: Path,
        bucket: str,
        name: str,
        content_type: str | None = None,
        custom_time: datetime | None = None,
    ) -> str:
        """Upload ``src``; ``custom_time`` sets the object's custom time (a lifecycle rule deletes
        results once it has passed: per-job retention)."""
        roundtrips.note("storage")
        try:
            blob = self._client.bucket(bucket).blob(name)
            if custom_time is not None:
                blob.custom_time = custom_time
            blob.upload_from_filename(str(src), content_type=content_type)
        except _TRANSIENT as exc:
            raise RetryableError(f"Cloud Storage unavailable uploading {name}: {exc}") from exc
        return f"gs://{bucket}/{name}"

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""
        count = 0
        roundtrips.note("storage")
        for blob in self._client.list_blobs(bucket, prefix=prefix):
            try:
                roundtrips.note("storage")
                blob.delete()
                count += 1
            except gexc.NotFound:
                pass
        return count
