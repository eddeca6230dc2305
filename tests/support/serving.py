"""Helpers for tests that talk to a real koe server over loopback HTTP (in a thread or in a subprocess)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

JFK_WORDS = "ask not what your country can do for you"


def words(text: str) -> str:
    """Lower-case words only, for comparing transcripts without punctuation."""
    return " ".join(re.findall(r"[a-z']+", text.lower()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server_in_thread(app: FastAPI) -> Iterator[str]:
    """Run `app` under a real uvicorn server on 127.0.0.1 in a thread; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def wait_ready(url: str, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> list[int]:
    """Poll GET /ping until 200; returns every status seen (so a test can check 503 came first)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            status = httpx.get(f"{url}/ping", timeout=2).status_code
        except httpx.TransportError:
            status = 0
        seen.append(status)
        if status == 200:
            return seen
        time.sleep(0.1)
    raise TimeoutError(f"{url}/ping never answered 200 (saw {sorted(set(seen))})")


@contextmanager
def server_process(
    command: list[str], env: Mapping[str, str], port: int, log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start a server command with `env` on top of ours; yields (base URL, process); stops it afterwards."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def koe_serve(env: Mapping[str, str], data: Path, *options: str) -> Iterator[str]:
    """`python -m koe serve --port N *options` with exactly `env` (cwd and log in `data`); yields its base URL
    once GET / answers 200 (the web page: what a browser opens first); stops it afterwards."""
    port = free_port()
    log = data / "server.log"
    command = [sys.executable, "-m", "koe", "serve", "--port", str(port), *options]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=data)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"koe serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"koe serve did not answer GET / within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]


def vtt_seconds(stamp: str) -> float:
    """`HH:MM:SS.mmm` -> seconds."""
    hours, minutes, seconds = stamp.replace(",", ".").split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
