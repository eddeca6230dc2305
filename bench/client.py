"""The load generator of S2 and S4, run in its own process (`python -m bench.client`, started by
`ClientProcess`) so that its Python work takes nothing from the server process's GIL and CPU accounting.

It reads one JSON command per line on stdin, prepares (reads the files, opens the clients), answers
`{"ready": true}`, waits for the line `go`, runs, and answers the result as one JSON line. The parent measures
the server process's CPU time between `go` and the result. Imports only the standard library and httpx.

Commands (`kind`):
- `invocations`: `clients` closed-loop clients post every file once to `url` + `path` with `headers`.
- `jobs_queued`: every file submitted at once to the jobs API (multipart, `fields`), then the job list polled
  until all have finished.
- `jobs_sequential`: one job at a time: submit, poll until it finishes, then the next.
Both jobs commands then fetch each job's result (`result_format`) for the word error rate, outside the timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.05  # one job at a time: its completion is seen within this
LIST_POLL_S = 0.25  # all at once: one list request per poll, whatever the number of jobs


class ClientProcess:
    """The client process: `run(command)` returns (result, server CPU seconds during the run)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.client"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def run(self, command: dict[str, Any]) -> tuple[dict[str, Any], float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        _send(self.proc.stdin, command)
        ready = _receive(self.proc.stdout)
        if not ready.get("ready"):
            raise RuntimeError(f"client process: {ready}")
        cpu = time.process_time()
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        result = _receive(self.proc.stdout)
        cpu = time.process_time() - cpu
        if "failed" in result:
            raise RuntimeError(f"client process: {result['failed']}")
        return result, cpu

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ClientProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _send(stream: IO[str], message: dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def _receive(stream: IO[str]) -> dict[str, Any]:
    line = stream.readline()
    if not line:
        raise RuntimeError("the client process ended")
    result: dict[str, Any] = json.loads(line)
    return result


# -- in the client process -------------------------------------------------------------------------


def invocations(command: dict[str, Any], go: threading.Event) -> dict[str, Any]:
    url, headers, clients = command["url"] + command["path"], command["headers"], command["clients"]
    work = deque((name, Path(path).read_bytes()) for name, path in command["files"])
    lock = threading.Lock()
    latencies: list[float] = []
    texts: dict[str, str] = {}
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def client() -> None:
        with httpx.Client(timeout=None) as http:
            start.wait()
            go.wait()
            while True:
                with lock:
                    if not work:
                        return
                    name, body = work.popleft()
                sent = time.perf_counter()
                try:
                    response = http.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                took = time.perf_counter() - sent
                with lock:
                    latencies.append(took)
                    if response.status_code == 200:
                        texts[name] = response.text
                    else:
                        errors.append(f"{response.status_code}: {response.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    _ready()
    began = _wait_go(go)
    for t in threads:
        t.join()
    return {"wall_s": time.perf_counter() - began, "latencies": latencies, "texts": texts, "errors": errors}


def jobs(command: dict[str, Any], go: threading.Event) -> dict[str, Any]:
    url, fields, queued = command["url"], command["fields"], command["kind"] == "jobs_queued"
    files = [(job_id, name, Path(path).read_bytes()) for job_id, name, path in command["jobs"]]
    errors: list[str] = []
    views: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=url, timeout=None) as http:

        def submit(job: tuple[str, str, bytes]) -> str:
            job_id, name, body = job
            response = http.post("/v1/jobs", data={**fields, "id": job_id}, files={"file": (name, body)})
            if response.status_code != 202:
                raise RuntimeError(f"submit {job_id}: {response.status_code} {response.text[:200]}")
            return job_id

        _ready()
        began = _wait_go(go)
        if queued:
            with ThreadPoolExecutor(len(files)) as pool:  # all at once
                ids = set(pool.map(submit, files))
            while len(views) < len(ids):
                time.sleep(LIST_POLL_S)
                listed = http.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]
                views.update((v["id"], v) for v in listed if v["id"] in ids and v["finished_at"])
        else:
            for job in files:
                job_id = submit(job)
                while True:
                    view = http.get(f"/v1/jobs/{job_id}").json()
                    if view["finished_at"]:
                        views[job_id] = view
                        break
                    time.sleep(POLL_S)
        wall = time.perf_counter() - began
        texts: dict[str, str] = {}
        for job_id, name, _ in files:
            view = views[job_id]
            if view["status"] != "completed":
                errors.append(f"{job_id}: {view['status']} {view.get('error')}")
                continue
            result = http.get(f"/v1/jobs/{job_id}/result", params={"format": command["result_format"]})
            texts[name] = result.text
    first = min(v["created_at"] for v in views.values())
    last = max(v["finished_at"] for v in views.values())
    return {
        "wall_s": wall,
        "server_wall_s": last - first,  # first job created to last one finished, by the server's clock
        "latencies": [v["finished_at"] - v["created_at"] for v in views.values()],
        "texts": texts,
        "errors": errors,
    }


_readied = threading.Event()  # the current command has answered `ready`


def _ready() -> None:
    _readied.set()
    _send(sys.stdout, {"ready": True})


def _wait_go(go: threading.Event) -> float:
    go.wait()
    return time.perf_counter()


def main() -> int:
    for line in sys.stdin:
        command = json.loads(line)
        go = threading.Event()
        _readied.clear()
        outcome: dict[str, Any] = {}
        worker = threading.Thread(target=_work, args=(command, go, outcome))
        worker.start()
        while not _readied.wait(0.05):
            if not worker.is_alive():  # failed while preparing: that is the answer
                _send(sys.stdout, outcome)
                break
        else:
            if sys.stdin.readline().strip() != "go":
                return 1
            go.set()
            worker.join()
            _send(sys.stdout, outcome)
    return 0


def _work(command: dict[str, Any], go: threading.Event, outcome: dict[str, Any]) -> None:
    try:
        run = invocations if command["kind"] == "invocations" else jobs
        outcome.update(run(command, go))
    except Exception as exc:
        outcome["failed"] = f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    raise SystemExit(main())
