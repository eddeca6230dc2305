"""Helpers for the reliability suites (test_faults, test_load, test_bad_input, test_security): a fault-injecting
HTTP proxy for S3, a small tmpfs for disk-full runs, snapshots of folder trees, reading the queue's database
directly, and a watcher that records every content an output object ever had.

Servers, workers, moto and webhook receivers come from support/jobs_support.py; test media from support/media.py.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from support.serving import free_port

FINISHED = ("completed", "failed", "expired", "cancelled")


def report(test: str, **figures: Any) -> None:
    """Append measured figures as a JSON line to $KOE_RELIABILITY_REPORT, if set (they feed docs/reliability.md)."""
    target = os.environ.get("KOE_RELIABILITY_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"test": test, **figures}) + "\n")


# -- the queue's database, read directly ---------------------------------------------------------------------


def read_jobs(db_path: Path) -> dict[str, dict[str, Any]]:
    """Every job row by id (a read-only connection, so the servers' WAL is left alone)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        db.row_factory = sqlite3.Row
        return {row["id"]: dict(row) for row in db.execute("SELECT * FROM jobs")}
    finally:
        db.close()


def integrity(db_path: Path) -> str:
    """`PRAGMA integrity_check` of the database ('ok' when it is sound)."""
    db = sqlite3.connect(db_path, timeout=30)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


# -- folder trees ---------------------------------------------------------------------------------------------


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, str]]:
    """{relative path: (mode, sha256 or link target)} for everything under `root` except the `skip` folders."""
    skipped = tuple(str(p) for p in skip)
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not os.path.join(dirpath, d).startswith(skipped)]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            if path.is_symlink():
                digest = "-> " + os.readlink(path)
            elif path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                digest = "dir"
            out[str(path.relative_to(root))] = (info.st_mode, digest)
    return out


@dataclass
class OutputWatcher:
    """Polls a folder every `interval` seconds and records each content every object in it ever had, so a test
    can tell an object written twice with different content from one written once (or twice, the same)."""

    folder: Path
    interval: float = 0.05
    seen: dict[str, set[str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def scan(self) -> None:
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name.startswith("."):  # a temporary file that is renamed into place
                continue
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except FileNotFoundError:
                continue
            self.seen.setdefault(path.name, set()).add(digest)

    def __enter__(self) -> OutputWatcher:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.scan()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.scan()

    def rewritten(self) -> dict[str, int]:
        """Objects seen with more than one content: {name: how many contents}."""
        return {name: len(digests) for name, digests in self.seen.items() if len(digests) > 1}


# -- a small file system for disk-full runs -----------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. '16m') mounted at `path` (root only); unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN, as CI and the dev machines are)."""
    if os.geteuid() != 0:
        return False
    probe = Path(f"/tmp/koe-mount-probe-{os.getpid()}")
    try:
        with tmpfs(probe, "1m"):
            return True
    except (subprocess.CalledProcessError, OSError):
        return False
    finally:
        probe.rmdir() if probe.is_dir() else None


def fill(folder: Path, name: str = "filler") -> Path:
    """Write zeros into `folder/name` until the file system is full; returns the filler file."""
    target = folder / name
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):  # big blocks first, then the last few bytes
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                continue
    finally:
        os.close(fd)
    return target


# -- a fault-injecting HTTP proxy (S3 on moto) ---------------------------------------------------------------

Fault = tuple[str, Any]
"""What the proxy does with one request: ("pass", None), ("status", (code, s3_error_code)), ("reset", None)
(close the connection without answering) or ("stall", seconds) (then forward)."""
Rule = Callable[[str, str, int], Fault]
"""(method, path, how many times this method+path was seen before) -> the Fault to apply."""


@dataclass
class ProxyLog:
    method: str
    path: str
    at: float
    fault: str


class FaultProxy:
    """A loopback HTTP proxy in front of `upstream` (a moto server) that applies `rule` to each request."""

    def __init__(self, upstream: str, rule: Rule | None = None) -> None:
        self.upstream = urlsplit(upstream)
        self.rule: Rule = rule or (lambda method, path, seen: ("pass", None))
        self.log: list[ProxyLog] = []
        self.counts: dict[tuple[str, str], int] = {}
        self.lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self, method: str | None = None, contains: str = "") -> list[ProxyLog]:
        with self.lock:
            return [e for e in self.log if (method is None or e.method == method) and contains in e.path]

    def _decide(self, method: str, path: str) -> Fault:
        with self.lock:
            key = (method, path.split("?")[0])
            seen = self.counts.get(key, 0)
            self.counts[key] = seen + 1
            fault = self.rule(method, key[1], seen)
            self.log.append(ProxyLog(method, path, time.monotonic(), fault[0]))
            return fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    parts: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("content-length") or 0)
                return self.rfile.read(length) if length else b""

            def _relay(self) -> None:
                body = self._body()
                kind, arg = proxy._decide(self.command, self.path)
                if kind == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if kind == "status":
                    code, s3_code = arg
                    payload = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{s3_code}</Code>"
                        f"<Message>injected fault</Message></Error>"
                    ).encode()
                    self.send_response(code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if kind == "stall":
                    time.sleep(float(arg))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")
                }
                headers["Content-Length"] = str(len(body))
                host = proxy.upstream.hostname or "127.0.0.1"
                conn = http.client.HTTPConnection(host, proxy.upstream.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    self.send_response(response.status)
                    for name, value in response.getheaders():
                        if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
