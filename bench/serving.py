"""The scenarios through HTTP: S2 (concurrent clients against koe's server and the per-request peer server)
and S4 (jobs queued on the local endpoint against the same jobs one at a time).

Servers run in this process (bench/servers.py), clients in another (bench/client.py): each run's CPU time
is the server process's, measured between the clients' start and their last answer.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.client import ClientProcess
from bench.data import Clip
from bench.scenarios import PEER, Decoding, Log, brief, corpus_wer, figures, latency_figures
from bench.servers import Served, jobs_app, koe_app, peer_app
from koe.engine import Engine

KOE_PLAIN = "koe: plain text (Accept: text/plain)"
KOE_SRT = "koe: SRT (Accept: application/x-subrip, timestamps)"
JOBS_QUEUED = "koe jobs: all queued at once"
JOBS_SEQUENTIAL = "koe jobs: one at a time"
SRT_LINE = re.compile(r"^\d+$|-->")


def attributes(decoding: Decoding) -> str | None:
    """The custom attributes a koe client sends: none for koe's defaults (beam 5), else the decoding's."""
    options = decoding.koe()
    if options == {"beam_size": 5}:
        return None
    return ";".join(f"{k}={v}" for k, v in options.items())


def srt_text(body: str) -> str:
    """The words of an SRT body (no numbers, no times)."""
    return " ".join(line.strip() for line in body.splitlines() if line.strip() and not SRT_LINE.search(line))


def concurrent_http(
    engine: Engine, decoding: Decoding, clips: list[Clip], clients: list[int], log: Log, rounds: int = 1
) -> dict[str, dict[str, Any]]:
    """Every configuration at each number of clients (each keeps its fastest of `rounds` runs)."""
    assert all(c.path is not None for c in clips)
    decoding.apply(engine)
    peer = Served(peer_app(engine.model, decoding.faster_whisper(engine.model)))
    koe_server = Served(koe_app(engine))
    base = {"Content-Type": "application/octet-stream"}
    custom = attributes(decoding)
    koe_base = base | ({"X-Amzn-SageMaker-Custom-Attributes": custom} if custom else {})
    setups = {
        PEER: (peer.url, base | {"Accept": "text/plain"}),
        KOE_PLAIN: (koe_server.url, koe_base | {"Accept": "text/plain"}),
        KOE_SRT: (koe_server.url, koe_base | {"Accept": "application/x-subrip"}),
    }
    files = [[c.name, str(c.path)] for c in clips]
    out: dict[str, dict[str, Any]] = {name: {} for name in setups}
    try:
        with ClientProcess() as client:
            for url, headers in setups.values():  # warm-up
                client.run(_invocations(url, headers, files[:1], 1))
            names = list(setups)
            for n in clients:
                for r in range(rounds):
                    for name in names[r % len(names) :] + names[: r % len(names)]:
                        url, headers = setups[name]
                        stats = engine.batcher.stats
                        before = (stats.batches, stats.items, stats.mixed_batches)
                        result, cpu = client.run(_invocations(url, headers, files, n))
                        batches, items, mixed = (
                            a - b
                            for a, b in zip((stats.batches, stats.items, stats.mixed_batches), before, strict=True)
                        )
                        record = _record(clips, result, cpu, srt=name == KOE_SRT)
                        koe = name != PEER
                        record["mean_batch"] = round(items / batches, 2) if koe and batches else None
                        record["mixed_batches"] = mixed if koe else None
                        kept = out[name].get(str(n))
                        walls = [*(kept["rounds_wall_s"] if kept else []), record["seconds"]]
                        if kept is None or record["seconds"] < kept["seconds"]:
                            out[name][str(n)] = kept = record
                        kept["rounds_wall_s"] = walls
                        log(f"  {n:>3} clients, round {r + 1}, {name}: {brief(record)}")
    finally:
        peer.close()
        koe_server.close()
    return out


def _invocations(url: str, headers: dict[str, str], files: list[list[str]], clients: int) -> dict[str, Any]:
    return {
        "kind": "invocations",
        "url": url,
        "path": "/invocations",
        "headers": headers,
        "files": files,
        "clients": clients,
    }


def _record(clips: list[Clip], result: dict[str, Any], cpu: float, srt: bool = False) -> dict[str, Any]:
    texts = {name: srt_text(body) if srt else body for name, body in result["texts"].items()}
    errors = result["errors"]
    audio = sum(c.duration for c in clips if c.name in texts) if errors else sum(c.duration for c in clips)
    record = figures(audio, result["wall_s"], cpu) | latency_figures(result["latencies"])
    record |= {
        "requests": len(result["latencies"]),
        "errors": len(errors),
        "error_samples": errors[:3],
        "wer": None if errors else _round(corpus_wer(clips, texts)),
    }
    return record


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def queued_jobs(
    engine: Engine, decoding: Decoding, clips: list[Clip], jobs: int, worker_concurrency: int, log: Log
) -> dict[str, Any]:
    """S4: `jobs` jobs (the clips, repeated as needed) submitted all at once to the jobs API of `koe serve`'s
    app with `worker_concurrency` job slots, then the same jobs one at a time (submit, wait, next)."""
    decoding.apply(engine)
    picked = [clips[i % len(clips)] for i in range(jobs)]
    fields = {"format": "text"}  # what a client wanting plain text asks for
    custom = attributes(decoding)
    if custom:
        fields |= dict(pair.split("=", 1) for pair in custom.split(";"))
    data_dir = Path(tempfile.mkdtemp(prefix="koe-bench-jobs-"))
    server = Served(jobs_app(engine, data_dir, worker_concurrency))
    runs: dict[str, Any] = {}
    try:
        with ClientProcess() as client:
            warm = [["warmup-0", picked[0].name, str(picked[0].path)]]
            client.run(
                {"kind": "jobs_sequential", "url": server.url, "fields": fields, "jobs": warm, "result_format": "text"}
            )
            for name, kind, prefix in ((JOBS_QUEUED, "jobs_queued", "q"), (JOBS_SEQUENTIAL, "jobs_sequential", "s")):
                command = {
                    "kind": kind,
                    "url": server.url,
                    "fields": fields,
                    "jobs": [[f"{prefix}-{i}", c.name, str(c.path)] for i, c in enumerate(picked)],
                    "result_format": "text",
                }
                stats = engine.batcher.stats
                before = (stats.batches, stats.items)
                result, cpu = client.run(command)
                batches, items = stats.batches - before[0], stats.items - before[1]
                record = _record(picked, result, cpu)
                record["server_wall_s"] = round(result["server_wall_s"], 2)
                record["mean_batch"] = round(items / batches, 2) if batches else None
                runs[name] = record
                log(f"  {name}: {brief(record)}")
    finally:
        server.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "jobs": jobs,
        "audio_s": round(sum(c.duration for c in picked), 1),
        "worker_concurrency": worker_concurrency,
        "format": "text",
        "runs": runs,
    }
