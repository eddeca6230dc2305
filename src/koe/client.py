"""`koe.Client`: the jobs API of a koe server (`koe serve`) from Python; the `koe submit / jobs / job / result`
commands use it.

    with koe.Client("http://127.0.0.1:8080", api_key=...) as client:
        job = client.submit(Path("talk.mp3"), format="srt")
        while not client.job(job["id"])["status"] in koe.client.FINISHED: ...
        print(client.result(job["id"]))

An error answer from the server is an `ApiError` (its status and the server's message); a server that cannot
be reached is an `UnreachableError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8080"
FINISHED = ("completed", "failed", "expired", "cancelled")
"""The statuses a job does not leave."""


class ApiError(Exception):
    """The server answered with an error: `status` and the message of its `{"error": {...}}` body."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            error = response.json().get("error", {})
            message = error.get("message") or response.text
        except (ValueError, AttributeError):
            message = response.text
        super().__init__(f"HTTP {response.status_code}: {message}")
        self.status = response.status_code


class UnreachableError(Exception):
    """The server could not be reached (refused, timed out, bad address)."""


class Client:
    """A client for one koe server's jobs API; close it (or use it as a context manager) when done."""

    def __init__(self, server: str = DEFAULT_SERVER, api_key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=httpx.Timeout(30, read=600))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; ApiError for an error answer, UnreachableError when there is no answer."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UnreachableError(f"cannot reach {self.http.base_url}: {exc}") from None
        if response.is_error:
            raise ApiError(response)
        return response

    def submit(self, path: Path, **fields: Any) -> dict[str, Any]:
        """Upload `path` as a job with these fields (format, language, model, id, webhook_url, ...; None: left
        out). The job's view: its id, status and locations."""
        data = {name: value for name, value in fields.items() if value is not None}
        with path.open("rb") as fh:
            view: dict[str, Any] = self.call("POST", "/v1/jobs", data=data, files={"file": (path.name, fh)}).json()
        return view

    def jobs(self, status: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        listed: list[dict[str, Any]] = self.call("GET", "/v1/jobs", params=params).json()["jobs"]
        return listed

    def job(self, job_id: str) -> dict[str, Any]:
        """One job: status, progress, timings, locations, error."""
        view: dict[str, Any] = self.call("GET", f"/v1/jobs/{quote(job_id)}").json()
        return view

    def result(self, job_id: str, fmt: str | None = None) -> str:
        """A completed job's transcript in `fmt` (default: the job's format)."""
        params = {"format": fmt} if fmt else {}
        return self.call("GET", f"/v1/jobs/{quote(job_id)}/result", params=params).text
