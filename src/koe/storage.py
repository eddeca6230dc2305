"""ObjectStore: read inputs from and write results to `file://` and `s3://` locations.

`file://` locations are confined to configured root folders: a location with `..`, a NUL byte, a host part,
or a path that resolves (symlinks included) outside every root is refused with `LocationError`.
`s3://` goes through boto3 with the region, credentials and endpoint URL from Settings (AWS S3, MinIO or a
moto server), confined to an allow-list of buckets: `Settings.s3_buckets` plus the buckets of the server's own
output and failure paths; `*` allows every bucket the credentials reach, and an empty list none. botocore's
exceptions are mapped here, once: a missing object is `InputNotFoundError`, anything else `StorageError`;
transient failures (throttling, 5xx, dropped connections) are retried with exponential backoff first.

Inputs are read as streams (a local file is opened in place; an S3 object is streamed into a spooled
temporary file, so PyAV can seek). Outputs are written atomically: a temporary file renamed over the target
locally, a single PUT on S3 (which S3 applies atomically).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar, cast
from urllib.parse import quote, unquote, urlsplit

from koe.config import Settings
from koe.errors import (
    InputNotFoundError,
    InputTooLargeError,
    KoeError,
    LocationError,
    StorageError,
    StorageFullError,
)

logger = logging.getLogger("koe.storage")

T = TypeVar("T")

CHUNK = 1024 * 1024
SPOOL_MEMORY = 32 * 1024 * 1024
"""An S3 input larger than this is spooled to disk rather than held in memory."""

TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "ConnectionError",
        "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
        "RequestThrottled", "BandwidthLimitExceeded", "EC2ThrottledException",
    }
)  # fmt: skip
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchBucket"})
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
PRIVATE_DIR = 0o700
"""Folders koe creates (the data folder, inputs, outputs): transcripts are nobody else's business. Files are
written through `tempfile.mkstemp`, which creates them 0600."""


def make_private_dir(path: Path) -> None:
    """Create `path` (and its parents) if missing; the folders created are 0700 whatever the umask."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    for created in missing:
        with suppress(OSError):
            os.chmod(created, PRIVATE_DIR)


def os_error(exc: OSError, what: str) -> StorageError:
    """The koe error for a local file-system failure to do `what`: a full disk (or quota) is StorageFullError."""
    if exc.errno in FULL_ERRNOS:
        return StorageFullError(f"cannot {what}: the disk is full ({exc.strerror})")
    return StorageError(f"cannot {what}: {exc.strerror or exc}")


@dataclass(frozen=True)
class Location:
    """A parsed location: `file:///abs/path` (bucket empty) or `s3://bucket/key`."""

    scheme: str
    bucket: str
    key: str

    def __str__(self) -> str:
        if self.scheme == "file":
            return "file://" + quote(self.key)
        return f"s3://{self.bucket}/{self.key}"

    def join(self, name: str) -> Location:
        """The location of `name` inside this one, taken as a folder."""
        if not name or "/" in name or name in (".", ".."):
            raise LocationError(f"not a plain object name: {name!r}")
        key = self.key.rstrip("/")
        joined = f"{key}/{name}" if key or self.scheme == "file" else name
        return Location(self.scheme, self.bucket, joined)


MAX_LOCATION_LENGTH = 4096
"""Longest location accepted: an S3 key is at most 1024 bytes, a Linux path 4096."""


def parse_location(url: str) -> Location:
    """Parse `url` into a Location; refuses other schemes, control characters (NUL, ESC, CR, LF, U+2028, bidi
    overrides: they would forge or hide log lines) and `..` segments."""
    if not isinstance(url, str) or not url:
        raise LocationError("a location must be a non-empty file:// or s3:// URL")
    if len(url) > MAX_LOCATION_LENGTH:  # it reaches logs, the queue and error messages: bound it
        raise LocationError(f"a location must be at most {MAX_LOCATION_LENGTH} characters")
    if "\x00" in url:
        raise LocationError("a location must not contain NUL bytes")
    if has_control_characters(url):
        raise LocationError(f"a location must not contain control characters: {url!r}")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise LocationError(f"a location has no query or fragment: {url!r}")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise LocationError(f"file:// locations name a local absolute path, not a host: {url!r}")
        path = unquote(parts.path)
        _refuse_escapes(path, url)
        if not path.startswith("/"):
            raise LocationError(f"file:// locations must be absolute: {url!r}")
        return Location("file", "", path)
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not bucket:
            raise LocationError(f"an s3:// location needs a bucket: {url!r}")
        key = parts.path.lstrip("/")
        _refuse_escapes(key, url)
        return Location("s3", bucket, key)
    raise LocationError(f"unsupported location {url!r}: use file:// or s3://")


BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a control character (C0, DEL, C1), a line or paragraph separator, or a bidi control."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in BIDI_CONTROLS for c in text)


def _refuse_escapes(path: str, url: str) -> None:
    if "\x00" in path or has_control_characters(path):
        raise LocationError("a location must not contain NUL bytes or control characters")
    if ".." in path.split("/"):
        raise LocationError(f"a location must not contain '..' segments: {url!r}")


NAME_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "/\\%")


def object_name(job_id: str, suffix: str) -> str:
    """A single-segment object name for a job id: `/`, `\\`, `%` and non-printables percent-encoded."""
    return quote(job_id, safe=NAME_SAFE) + suffix


def file_location(path: Path) -> str:
    """The file:// location of an absolute local path."""
    return str(Location("file", "", str(path.absolute())))


class FileStore:
    """Objects under local root folders. Every path is checked against the roots after resolving symlinks."""

    def __init__(self, roots: Sequence[Path]) -> None:
        if not roots:
            raise ValueError("FileStore needs at least one root folder")
        self.roots = tuple(Path(os.path.realpath(r)) for r in roots)

    def resolve(self, location: Location) -> Path:
        """The real path for `location`, or LocationError when it falls outside every root."""
        real = Path(os.path.realpath(location.key))
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            raise LocationError(f"{location} is outside the allowed folders")
        return real

    @contextmanager
    def open(self, location: Location, max_bytes: int) -> Iterator[BinaryIO]:
        path = self.resolve(location)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise InputNotFoundError(f"no object at {location}") from None
        except IsADirectoryError:
            raise InputNotFoundError(f"{location} is a folder, not an object") from None
        except OSError as exc:
            raise StorageError(f"cannot read {location}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as fh:
            size = os.fstat(fd).st_size
            if size > max_bytes:
                raise InputTooLargeError(f"the input is {size} bytes; the limit is {max_bytes} bytes")
            yield fh

    def write(self, location: Location, data: bytes, content_type: str | None = None) -> None:
        """Write `data` atomically: a temporary file in the same folder, renamed over the target."""
        path = self.resolve(location)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
            self.resolve(Location("file", "", str(path.parent)))  # mkdir did not follow a link out
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise os_error(exc, f"write {location}") from exc

    def exists(self, location: Location) -> bool:
        return self.resolve(location).is_file()

    def delete(self, location: Location) -> None:
        self.resolve(location).unlink(missing_ok=True)

    def ingest(self, source: IO[bytes], folder: Path, max_bytes: int) -> tuple[Path, str, int]:
        """Copy a stream into `folder` under its sha256 (content-addressed): (path, sha256, size).

        The same bytes always land at the same path, so storing an upload twice is harmless.
        """
        target_dir = self.resolve(Location("file", "", str(folder)))
        try:
            target_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
            fd, tmp = tempfile.mkstemp(prefix=".upload.", suffix=".tmp", dir=target_dir)
        except OSError as exc:
            raise os_error(exc, f"store the upload in {target_dir}") from exc
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise InputTooLargeError(f"the upload is larger than the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            path = target_dir / sha
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise os_error(exc, f"store the upload in {target_dir}") from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path, sha, size

    def ingest_file(self, path: Path, folder: Path, suffix: str = "") -> tuple[Path, str]:
        """Move a local file (a spooled upload) into `folder` under its sha256 (plus `suffix`): (new path, sha256)."""
        target_dir = self.resolve(Location("file", "", str(folder)))
        try:
            target_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        except OSError as exc:
            raise os_error(exc, f"store the upload in {target_dir}") from exc
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        sha = digest.hexdigest()
        target = target_dir / (sha + suffix)
        try:
            os.replace(path, target)
        except OSError:  # another file system: copy beside the target, then rename into place
            tmp = ""
            try:
                fd, tmp = tempfile.mkstemp(prefix=".upload.", suffix=".tmp", dir=target_dir)
                os.close(fd)
                shutil.copyfile(path, tmp)
                os.replace(tmp, target)
            except OSError as exc:
                if tmp:
                    Path(tmp).unlink(missing_ok=True)
                raise os_error(exc, f"store the upload in {target_dir}") from exc
            except BaseException:
                if tmp:
                    Path(tmp).unlink(missing_ok=True)
                raise
        with suppress(OSError):
            os.chmod(target, 0o600)  # a moved file keeps its mode; an upload is as private as a transcript
        return target, sha


class S3Store:
    """Objects in S3 (or anything speaking its API) through one boto3 client, built on first use."""

    def __init__(
        self,
        client_factory: Callable[[], Any],
        *,
        buckets: Sequence[str] = (),
        attempts: int = 4,
        backoff_s: float = 0.2,
        spool_dir: Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()
        self.buckets = frozenset(buckets)
        """Buckets locations may name; `*`: any."""
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.spool_dir = spool_dir
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        def factory() -> Any:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session(
                aws_access_key_id=settings.s3_access_key_id,
                aws_secret_access_key=_secret(settings.s3_secret_access_key),
                aws_session_token=_secret(settings.s3_session_token),
                region_name=settings.s3_region,
            )
            config = Config(
                retries={"total_max_attempts": 1},  # S3Store retries itself, with backoff
                connect_timeout=min(10.0, settings.s3_timeout_s),
                read_timeout=settings.s3_timeout_s,
                s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
            )
            return session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)

        own = [
            parse_location(p).bucket
            for p in (settings.output_path, settings.failure_path)
            if p and p.startswith("s3://")
        ]
        return cls(
            factory,
            buckets=[*settings.s3_buckets, *own],
            attempts=settings.storage_attempts,
            spool_dir=settings.spool_dir,
        )

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def check(self, location: Location) -> None:
        if "*" not in self.buckets and location.bucket not in self.buckets:
            raise LocationError(
                f"bucket {location.bucket!r} is not one of the allowed buckets (the server's KOE_S3_BUCKETS)"
            )

    @contextmanager
    def open(self, location: Location, max_bytes: int) -> Iterator[BinaryIO]:
        self.check(location)
        spool_dir = str(self.spool_dir) if self.spool_dir else None
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, dir=spool_dir) as spool:
            self._retrying(f"read {location}", lambda: self._download(location, spool, max_bytes))
            spool.seek(0)
            yield cast(BinaryIO, spool)

    def _download(self, location: Location, spool: IO[bytes], max_bytes: int) -> None:
        spool.seek(0)
        spool.truncate()
        head = self.client.head_object(Bucket=location.bucket, Key=location.key)
        size = int(head.get("ContentLength", 0))
        if size > max_bytes:
            raise InputTooLargeError(f"the input is {size} bytes; the limit is {max_bytes} bytes")
        body = self.client.get_object(Bucket=location.bucket, Key=location.key)["Body"]
        try:
            copied = 0
            while chunk := body.read(CHUNK):
                copied += len(chunk)
                if copied > max_bytes:
                    raise InputTooLargeError(f"the input is larger than the limit of {max_bytes} bytes")
                spool.write(chunk)
        finally:
            body.close()

    def read_bytes(self, location: Location) -> bytes:
        self.check(location)

        def get() -> bytes:
            body = self.client.get_object(Bucket=location.bucket, Key=location.key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return self._retrying(f"read {location}", get)

    def write(self, location: Location, data: bytes, content_type: str | None = None) -> None:
        self.check(location)
        extra = {"ContentType": content_type} if content_type else {}
        self._retrying(
            f"write {location}",
            lambda: self.client.put_object(Bucket=location.bucket, Key=location.key, Body=data, **extra),
            missing_is_input=False,
        )

    def exists(self, location: Location) -> bool:
        self.check(location)
        try:
            self._retrying(
                f"check {location}", lambda: self.client.head_object(Bucket=location.bucket, Key=location.key)
            )
        except InputNotFoundError:
            return False
        return True

    def delete(self, location: Location) -> None:
        self.check(location)
        self._retrying(
            f"delete {location}",
            lambda: self.client.delete_object(Bucket=location.bucket, Key=location.key),
            missing_is_input=False,
        )

    def _retrying(self, what: str, call: Callable[[], T], *, missing_is_input: bool = True) -> T:
        """Run `call`, retrying transient failures with exponential backoff; map botocore errors."""
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except KoeError:
                raise
            except Exception as exc:
                error = map_boto_error(exc, what, missing_is_input=missing_is_input)
                if not is_transient(exc) or attempt == self.attempts:
                    raise error from exc
                delay = self.backoff_s * 2 ** (attempt - 1)
                logger.warning("%s failed (%s); retry %d in %.1fs", what, error.message, attempt, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def is_transient(exc: BaseException) -> bool:
    """Whether retrying `exc` (a botocore error) may succeed: throttling, 5xx, a dropped connection."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in TRANSIENT_CODES or status >= 500 or status == 429
    return False


def map_boto_error(exc: BaseException, what: str, *, missing_is_input: bool = True) -> KoeError:
    """The koe error for a botocore failure to do `what`."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        message = exc.response.get("Error", {}).get("Message") or code
        if code in NOT_FOUND_CODES and missing_is_input:
            return InputNotFoundError(f"cannot {what}: {message}")
        return StorageError(f"cannot {what}: {code}: {message}")
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"cannot {what}: no S3 credentials configured")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"cannot {what}: {exc}")
    return StorageError(f"cannot {what}: {type(exc).__name__}: {exc}")


def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


class ObjectStore:
    """One store for every location: routes `file://` to a FileStore and `s3://` to an S3Store."""

    def __init__(self, files: FileStore, s3: S3Store | None = None) -> None:
        self.files = files
        self.s3 = s3

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        """file:// confined to the data folder plus `storage_roots`; s3:// configured from settings."""
        make_private_dir(settings.data_dir)
        return cls(FileStore([settings.data_dir, *settings.storage_roots]), S3Store.from_settings(settings))

    def _route(self, url: str) -> tuple[Location, FileStore | S3Store]:
        location = parse_location(url)
        if location.scheme == "file":
            self.files.resolve(location)
            return location, self.files
        if self.s3 is None:
            raise LocationError("s3:// locations are not configured")
        self.s3.check(location)
        return location, self.s3

    def check(self, url: str) -> str:
        """`url` normalized, if this store may use it; LocationError if not."""
        return str(self._route(url)[0])

    def join(self, folder_url: str, name: str) -> str:
        location, _ = self._route(folder_url)
        return self.check(str(location.join(name)))

    @contextmanager
    def open(self, url: str, max_bytes: int) -> Iterator[BinaryIO]:
        """The object at `url` as a readable, seekable binary stream."""
        location, store = self._route(url)
        with store.open(location, max_bytes) as fh:
            yield fh

    def read_bytes(self, url: str, max_bytes: int = 1024**3) -> bytes:
        location, store = self._route(url)
        if isinstance(store, S3Store):
            return store.read_bytes(location)
        with store.open(location, max_bytes) as fh:
            return fh.read()

    def write(self, url: str, data: bytes, content_type: str | None = None) -> None:
        """Write `data` at `url` atomically (readers see the old object or the whole new one)."""
        location, store = self._route(url)
        store.write(location, data, content_type)

    def exists(self, url: str) -> bool:
        location, store = self._route(url)
        return store.exists(location)

    def delete(self, url: str) -> None:
        location, store = self._route(url)
        store.delete(location)
