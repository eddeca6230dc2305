"""ObjectStore: file:// confinement and atomic writes; s3:// against a real moto server on 127.0.0.1."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from koe.config import Settings
from koe.errors import InputNotFoundError, InputTooLargeError, LocationError, StorageError
from koe.storage import FileStore, Location, ObjectStore, S3Store, file_location, object_name, parse_location
from support.jobs_support import REGION, boto_client, moto_server

# -- locations --------------------------------------------------------------------------------------------------


def test_parse_file_and_s3_locations() -> None:
    assert parse_location("file:///data/in/a.wav") == Location("file", "", "/data/in/a.wav")
    assert parse_location("file://localhost/data/x") == Location("file", "", "/data/x")
    assert parse_location("file:///data/a%20b.wav").key == "/data/a b.wav"
    assert parse_location("s3://bucket/dir/a.wav") == Location("s3", "bucket", "dir/a.wav")
    assert parse_location("s3://bucket") == Location("s3", "bucket", "")
    assert str(parse_location("file:///data/a%20b.wav")) == "file:///data/a%20b.wav"
    assert str(Location("s3", "b", "out").join("x.out")) == "s3://b/out/x.out"
    assert str(Location("s3", "b", "").join("x.out")) == "s3://b/x.out"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/data/a.wav",  # no scheme
        "http://example.com/a.wav",
        "file://evil.example.com/etc/passwd",  # a host
        "file:relative/path",
        "file:///data/../etc/passwd",
        "file:///data/%2e%2e/etc/passwd",  # an encoded ..
        "file:///data/a\x00.wav",
        "file:///data/a%00.wav",
        "file:///data/a.wav?x=1",
        "s3:///key-without-bucket",
        "s3://bucket/../other",
    ],
)
def test_bad_locations_are_refused(url: str) -> None:
    with pytest.raises(LocationError):
        parse_location(url)


def test_object_names_are_one_segment() -> None:
    assert object_name("job-1", ".out") == "job-1.out"
    assert object_name("a/b", ".out") == "a%2Fb.out"
    assert object_name("../../x", "-error.out") == "..%2F..%2Fx-error.out"
    assert "/" not in object_name("/abs\\x%y", ".out")
    with pytest.raises(LocationError):
        Location("file", "", "/data").join("../x")


# -- file:// ----------------------------------------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    inside = tmp_path / "data"
    outside = tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    return inside, outside


def test_file_store_stays_inside_its_roots(roots: tuple[Path, Path]) -> None:
    inside, outside = roots
    store = ObjectStore(FileStore([inside]))
    (inside / "ok.txt").write_text("ok")
    assert store.read_bytes(file_location(inside / "ok.txt")) == b"ok"
    for path in (outside / "secret.txt", Path("/etc/passwd"), inside.parent):
        with pytest.raises(LocationError):
            store.read_bytes(file_location(path))
        with pytest.raises(LocationError):
            store.write(file_location(path), b"x")
    # Symlinks that lead out: to a file, and through a folder.
    (inside / "link.txt").symlink_to(outside / "secret.txt")
    (inside / "dir").symlink_to(outside)
    for path in (inside / "link.txt", inside / "dir" / "secret.txt", inside / "dir" / "new.txt"):
        with pytest.raises(LocationError):
            store.read_bytes(file_location(path))
        with pytest.raises(LocationError):
            store.write(file_location(path), b"x")
    assert (outside / "secret.txt").read_text() == "secret"
    assert not (outside / "new.txt").exists()
    # A symlink that stays inside is fine.
    (inside / "alias.txt").symlink_to(inside / "ok.txt")
    assert store.read_bytes(file_location(inside / "alias.txt")) == b"ok"


def test_file_writes_are_atomic_and_create_folders(roots: tuple[Path, Path]) -> None:
    inside, _ = roots
    store = ObjectStore(FileStore([inside]))
    target = file_location(inside / "out" / "deep" / "job.out")
    store.write(target, b"first")
    store.write(target, b"second")
    assert store.read_bytes(target) == b"second"
    assert store.exists(target)
    assert sorted(p.name for p in (inside / "out" / "deep").iterdir()) == ["job.out"]  # no temp files left
    store.delete(target)
    assert not store.exists(target)


def test_file_reads_map_errors_and_limits(roots: tuple[Path, Path]) -> None:
    inside, _ = roots
    store = ObjectStore(FileStore([inside]))
    with pytest.raises(InputNotFoundError):
        store.read_bytes(file_location(inside / "missing.wav"))
    (inside / "big.bin").write_bytes(b"x" * 100)
    with pytest.raises(InputTooLargeError), store.open(file_location(inside / "big.bin"), max_bytes=99):
        pass
    with store.open(file_location(inside / "big.bin"), max_bytes=100) as fh:
        assert fh.read() == b"x" * 100


def test_ingest_is_content_addressed(roots: tuple[Path, Path], tmp_path: Path) -> None:
    inside, _ = roots
    files = FileStore([inside])
    first, sha, size = files.ingest(io.BytesIO(b"audio bytes"), inside / "inputs", max_bytes=100)
    again, sha2, _ = files.ingest(io.BytesIO(b"audio bytes"), inside / "inputs", max_bytes=100)
    assert first == again and sha == sha2 and size == 11 and first.name == sha
    with pytest.raises(InputTooLargeError):
        files.ingest(io.BytesIO(b"y" * 101), inside / "inputs", max_bytes=100)
    spooled = tmp_path / "spooled.tmp"
    spooled.write_bytes(b"audio bytes")
    moved, sha3 = files.ingest_file(spooled, inside / "inputs")
    assert moved == first and sha3 == sha and not spooled.exists()
    assert sorted(p.name for p in (inside / "inputs").iterdir()) == [sha]
    with pytest.raises(LocationError):
        files.ingest(io.BytesIO(b"z"), tmp_path / "elsewhere", max_bytes=10)


# -- s3:// against moto ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        boto_client("s3", url).create_bucket(Bucket="koe-test")
        yield url


def s3_store(moto: str, tmp_path: Path, **settings: Any) -> ObjectStore:
    config = Settings(
        data_dir=tmp_path,
        s3_endpoint_url=moto,
        s3_region=REGION,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        **{"s3_buckets": ["*"], **settings},
    )
    return ObjectStore.from_settings(config)


def test_s3_round_trip(moto: str, tmp_path: Path) -> None:
    store = s3_store(moto, tmp_path)
    store.write("s3://koe-test/out/job.out", b"WEBVTT\n", "text/vtt; charset=utf-8")
    assert store.read_bytes("s3://koe-test/out/job.out") == b"WEBVTT\n"
    assert store.exists("s3://koe-test/out/job.out")
    head = boto_client("s3", moto).head_object(Bucket="koe-test", Key="out/job.out")
    assert head["ContentType"] == "text/vtt; charset=utf-8"
    with store.open("s3://koe-test/out/job.out", max_bytes=100) as fh:
        assert fh.seekable() and fh.read() == b"WEBVTT\n"
    with pytest.raises(InputTooLargeError), store.open("s3://koe-test/out/job.out", max_bytes=3):
        pass
    store.delete("s3://koe-test/out/job.out")
    assert not store.exists("s3://koe-test/out/job.out")
    assert store.join("s3://koe-test/out", "a%2Fb.out") == "s3://koe-test/out/a%2Fb.out"


def test_s3_errors_are_mapped(moto: str, tmp_path: Path) -> None:
    store = s3_store(moto, tmp_path)
    with pytest.raises(InputNotFoundError), store.open("s3://koe-test/missing.wav", max_bytes=10):
        pass
    with pytest.raises(StorageError):
        store.write("s3://no-such-bucket/x.out", b"x")


def test_s3_bucket_allow_list(moto: str, tmp_path: Path) -> None:
    store = s3_store(moto, tmp_path, s3_buckets=["koe-test"])
    store.check("s3://koe-test/in/a.wav")
    with pytest.raises(LocationError):
        store.check("s3://other-bucket/in/a.wav")
    with pytest.raises(LocationError):
        store.write("s3://other-bucket/x.out", b"x")


class FlakyClient:
    """A stand-in S3 client: fails with `errors` first, then succeeds."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {}


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


def test_s3_retries_transient_errors_with_backoff() -> None:
    delays: list[float] = []
    flaky = FlakyClient([client_error("SlowDown", 503), EndpointConnectionError(endpoint_url="http://x")])
    store = S3Store(lambda: flaky, buckets=["*"], attempts=4, backoff_s=0.1, sleep=delays.append)
    store.write(Location("s3", "b", "k"), b"x")
    assert flaky.calls == 3 and delays == [0.1, 0.2]

    delays.clear()
    denied = FlakyClient([client_error("AccessDenied", 403)])
    store = S3Store(lambda: denied, buckets=["*"], attempts=4, sleep=delays.append)
    with pytest.raises(StorageError, match="AccessDenied"):
        store.write(Location("s3", "b", "k"), b"x")
    assert denied.calls == 1 and delays == []

    always = FlakyClient([client_error("InternalError", 500) for _ in range(5)])
    store = S3Store(lambda: always, buckets=["*"], attempts=3, sleep=delays.append)
    with pytest.raises(StorageError, match="InternalError"):
        store.write(Location("s3", "b", "k"), b"x")
    assert always.calls == 3


def test_data_dir_is_a_root(tmp_path: Path) -> None:
    store = ObjectStore.from_settings(Settings(data_dir=tmp_path / "koe", storage_roots=[tmp_path / "extra"]))
    store.check(file_location(tmp_path / "koe" / "x"))
    store.check(file_location(tmp_path / "extra" / "x"))
    with pytest.raises(LocationError):
        store.check(file_location(tmp_path / "x"))
    assert os.path.isdir(tmp_path / "koe")


def test_a_location_longer_than_the_limit_is_refused_without_echoing_it() -> None:
    from koe.storage import MAX_LOCATION_LENGTH, parse_location

    long = "s3://bucket/" + "k" * MAX_LOCATION_LENGTH
    with pytest.raises(LocationError) as caught:
        parse_location(long)
    assert "at most 4096 characters" in str(caught.value) and "kkkk" not in str(caught.value)
    assert parse_location("s3://bucket/" + "k" * 1000).key == "k" * 1000
