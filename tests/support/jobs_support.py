"""Helpers for the local-endpoint tests: a moto server, a webhook receiver, `koe serve` / `koe worker`
subprocesses, and waiting for conditions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx

from support.serving import free_port

T = TypeVar("T")

REGION = "us-east-1"
AWS_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": REGION}
KOE = [str(Path(sys.executable).parent / "koe")]


def wait_for(check: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.1, what: str = "") -> T:
    """Call `check` until it returns something truthy; return that, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what or check}")
        time.sleep(interval)


# -- a moto server --------------------------------------------------------------------------------------------


@contextmanager
def moto_server() -> Iterator[str]:
    """A real moto server on 127.0.0.1 (S3, SNS, SQS, ...); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def boto_client(service: str, endpoint: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint, **AWS_CREDENTIALS)  # type: ignore[call-overload]


# -- a webhook receiver ---------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A real HTTP server that records the JSON posted to it; `fail_first` answers 503 that many times."""

    url: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    fail_first: int = 0
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_job(self, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if m.get("inferenceId") == job_id]


@contextmanager
def webhook_receiver(fail_first: int = 0) -> Iterator[Receiver]:
    port = free_port()
    receiver = Receiver(f"http://127.0.0.1:{port}/hook", fail_first=fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with receiver.lock:
                if receiver.refused < receiver.fail_first:
                    receiver.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.messages.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


# -- koe processes --------------------------------------------------------------------------------------------


def koe_env(data_dir: Path, **settings: Any) -> dict[str, str]:
    """The environment for a `koe` subprocess: KOE_* settings on top of ours, CPU, quick timers, and the fast
    tiny.en model (these tests are about the endpoint, not the default model, which is base)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOE_")}
    base = {
        "data_dir": data_dir, "model": "tiny.en", "device": "cpu", "cpu_threads": 1, "poll_s": 0.2,
        "heartbeat_s": 0.5, "reap_interval_s": 0.5, "model_idle_s": 60,
        "worker_concurrency": 1,  # these tests count jobs one slot at a time (the default follows the batch)
    }  # fmt: skip
    for name, value in {**base, **settings}.items():
        env[f"KOE_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    return env


@dataclass
class KoeProcess:
    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_koe(args: list[str], env: Mapping[str, str], log: Path) -> KoeProcess:
    with log.open("ab") as out:
        process = subprocess.Popen([*KOE, *args], env=dict(env), stdout=out, stderr=subprocess.STDOUT)
    return KoeProcess(process, log)


def start_server(env: Mapping[str, str], log: Path, port: int | None = None, timeout: float = 60) -> KoeProcess:
    """`koe serve` on 127.0.0.1 with `env`; returns once GET /ping answers 200."""
    port = port or free_port()
    server = start_koe(["serve", "--port", str(port), "--log-level", "info"], env, log)
    server.url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if server.process.poll() is not None:
            raise RuntimeError(f"koe serve exited with {server.process.returncode}:\n{server.text()}")
        try:
            return httpx.get(f"{server.url}/ping", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, timeout, what="koe serve to answer /ping")
    return server


def job_view(url: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def wait_finished(url: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        view = job_view(url, job_id)
        return view if view["status"] in ("completed", "failed", "expired", "cancelled") else None

    return wait_for(finished, timeout, 0.2, f"job {job_id} to finish")


def metric(url: str, name: str) -> float:
    """One sample's value from GET /metrics (0 when absent)."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
