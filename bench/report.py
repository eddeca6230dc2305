"""Results: the JSON file, the markdown table and the PNG chart (throughput against concurrency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_all(results: dict[str, Any], stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    paths[0].write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(results), encoding="utf-8")
    chart(results, paths[2])
    return paths


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(results: dict[str, Any]) -> str:
    hw, run = results["hardware"], results["run"]
    lines = [
        f"# koe benchmark, {run['date']} on {hw['host']}",
        "",
        f"Model **{run['model']}** ({run['device']}, {run['compute_type']}); {hw['cpu']} ({hw['cores']} cores), "
        f"{hw['memory_gb']} GB RAM; GPU: {hw['gpu'] or 'none'}. faster-whisper {hw['faster_whisper']}, "
        f"CTranslate2 {hw['ctranslate2']}. Command: `{run['command']}` ({'full' if run['full'] else 'quick'} run, "
        f"{run['seconds']:.0f} s). Every configuration of a scenario ran in this one process, on the same audio "
        "and model.",
        "",
    ]
    s1 = results.get("S1")
    if s1:
        base = s1["runs"]["recipe (sequential, beam 5)"]["x_real_time"]
        lines += [
            f"## S1: one long file ({s1['audio']}, {s1['audio_s']:.0f} s)",
            "",
            "*x real time*: audio seconds per wall-clock second (the fastest of "
            f"{s1.get('rounds', 1)} round(s)); *per CPU s*: audio seconds per CPU second of this process (steadier "
            "than wall time on a shared machine).",
            "",
            "| configuration | x real time | vs the recipe | per CPU s | WER | fallbacks |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in s1["runs"].items():
            lines.append(
                f"| {name} | {r['x_real_time']:.1f} | {_ratio(r['x_real_time'], base)} "
                f"| {r['x_real_time_per_cpu_s']:.1f} | {_pct(r['wer'])} | {_n(r['fallbacks'])} |"
            )
        lines.append("")
    s2 = results.get("S2")
    if s2:
        clients = s2["clients"]
        peer = s2["runs"]["peer: a batched pipeline per request (bs 8)"]
        lines += [
            f"## S2: {s2['requests']} short requests ({s2['audio_s']:.0f} s of audio) through HTTP",
            "",
            "Aggregate x real time (and its ratio to the peer server) / p50 / p95 latency in seconds, by number "
            f"of concurrent clients (each the fastest of {s2.get('rounds', 1)} round(s)).",
            "",
            "| configuration | " + " | ".join(f"{n} clients" for n in clients) + " |",
            "| --- | " + " | ".join("---:" for _ in clients) + " |",
        ]
        for name, by_n in s2["runs"].items():
            cells = []
            for n in clients:
                r, base = by_n[str(n)], peer[str(n)]["x_real_time"]
                cells.append(
                    f"{r['x_real_time']:.1f} ({_ratio(r['x_real_time'], base)}) / {r['p50_s']:.1f} / {r['p95_s']:.1f}"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    s3 = results.get("S3")
    if s3:
        lines += [
            f"## S3: word error rate on {s3['clips']} clips with exact references ({s3['audio_s']:.0f} s)",
            "",
            "One request at a time, clip by clip through every configuration in turn (so x real time here is "
            "the single-request speed on short inputs). *Noisy*: the same clips with white noise at 0 dB SNR, "
            "where the temperature fallback triggers; *fallbacks*: chunks decoded again at a higher temperature.",
            "",
            "| configuration | WER | x real time | per CPU s | fallbacks | WER, noisy | fallbacks, noisy |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        noisy = s3.get("noisy_runs", {})
        for name, r in s3["runs"].items():
            n = noisy.get(name)
            tail = f"{_pct(n['wer'])} | {_n(n['fallbacks'])}" if n else "- | -"
            lines.append(
                f"| {name} | {_pct(r['wer'])} | {r['x_real_time']:.1f} | {r['x_real_time_per_cpu_s']:.1f} "
                f"| {_n(r['fallbacks'])} | {tail} |"
            )
        lines.append("")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    s2 = results.get("S2")
    ax = axes[0]
    if s2:
        clients = s2["clients"]
        for name, by_n in s2["runs"].items():
            ax.plot(clients, [by_n[str(n)]["x_real_time"] for n in clients], "o-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(n) for n in clients])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("aggregate x real time")
        ax.set_title(f"S2: {s2['requests']} short requests through HTTP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    s1 = results.get("S1")
    ax = axes[1]
    if s1:
        names = list(s1["runs"])
        values = [s1["runs"][n]["x_real_time"] for n in names]
        ax.barh(names, values, color="tab:blue")
        ax.invert_yaxis()
        ax.set_xlabel("x real time")
        ax.set_title(f"S1: one long file ({s1['audio_s']:.0f} s)")
        ax.tick_params(axis="y", labelsize=8)
    run = results["run"]
    fig.suptitle(f"koe benchmark: {run['model']} on {run['device']} ({results['hardware']['cpu']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
