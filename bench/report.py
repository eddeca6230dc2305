"""Results: the JSON file, the markdown tables and (at the end) the PNG chart.

`write(results, stem)` is called after every scenario (JSON + markdown), so a run cut short keeps what it
measured; `write(..., chart=True)` adds the chart at the end (matplotlib is imported only then, and a machine
without it gets no chart). Every figure is shown as x real time beside CPU seconds per audio second.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

FIGURES = (
    "*x real time*: audio seconds per wall-clock second; *CPU s/audio s*: CPU seconds of the process that does "
    "the work (all its threads; the server process in S2 and S4, whose clients run in another process) per "
    "second of audio (steadier than wall time on a shared machine; on a GPU, the host work that feeds it)."
)


def write(
    results: dict[str, Any],
    stem: Path,
    chart: bool = False,
    markdown: Callable[[dict[str, Any]], str] | None = None,
) -> list[Path]:
    """Writes stem.json and stem.md (with `markdown`, default `single_run`), and stem.png when `chart`."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    paths[1].write_text((markdown or single_run)(results), encoding="utf-8")
    if chart:
        png = stem.with_suffix(".png")
        if draw(results, png):
            paths.append(png)
    return paths


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value and base else "-"


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def single_run(results: dict[str, Any]) -> str:
    hw, run = results["hardware"], results["run"]
    decoding = run.get("decoding", {})
    fixed = decoding.get("fixed_tokens")
    lines = [
        f"# koe benchmark, {run['date']} on {hw['host']}",
        "",
        f"Model **{run['model']}** ({run['device']}, {run['compute_type']}, koe batch size {run.get('batch_size')}); "
        f"beam {decoding.get('beam_size', 5)}"
        + (f", fixed-length decoding ({fixed} tokens per chunk, end of text suppressed)" if fixed else "")
        + f". {hw['cpu']} ({hw['cores']} cores), {hw['memory_gb']} GB RAM; GPU: {hw['gpu'] or 'none'}. "
        f"faster-whisper {hw['faster_whisper']}, CTranslate2 {hw['ctranslate2']}. Command: `{run['command']}` "
        f"({run.get('seconds', 0):.0f} s{'' if run.get('finished') else ', not finished'}). Every configuration of "
        "a scenario ran in this one process, on the same audio and model.",
        "",
        FIGURES,
        "",
    ]
    lines += sections(results, "##")
    return "\n".join(lines)


def sections(results: dict[str, Any], h: str) -> list[str]:
    lines: list[str] = []
    if results.get("S1"):
        lines += s1_table(results["S1"], h)
    if results.get("S2"):
        lines += s2_table(results["S2"], h)
    if results.get("S3"):
        lines += s3_table(results["S3"], h)
    if results.get("S4"):
        lines += s4_table(results["S4"], h)
    return lines


def s1_table(s1: dict[str, Any], h: str) -> list[str]:
    best = s1.get("best_fw_batched")
    base = s1["runs"][best]["x_real_time"] if best else None
    lines = [
        f"{h} S1: one long file ({s1['audio']}, {s1['audio_s']:.0f} s)",
        "",
        f"One request at a time (the fastest of {s1.get('rounds', 1)} round(s)). *vs fw batched*: x real time "
        f"against faster-whisper's best batched figure ({best or 'not run'}). *chunks*: items koe's batcher "
        "decoded (chunks, continuations of chunks the model ended early, fallbacks).",
        "",
        "| configuration | x real time | CPU s/audio s | vs fw batched | WER | fallbacks | chunks |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in s1["runs"].items():
        lines.append(
            f"| {name} | {_x(r['x_real_time'])} | {_cpu(r['cpu_s_per_audio_s'])} | {_ratio(r['x_real_time'], base)} "
            f"| {_pct(r['wer'])} | {_n(r['fallbacks'])} | {_n(r['chunks'])} |"
        )
    return [*lines, ""]


def s2_table(s2: dict[str, Any], h: str) -> list[str]:
    levels, unit = s2["levels"], s2.get("unit", "clients")
    runs = s2["runs"]
    peer = next((name for name in runs if name.startswith("peer")), None)
    how = (
        "through HTTP, clients in their own process"
        if s2.get("transport") == "http"
        else "from threads straight into the engine (no HTTP)"
    )
    lines = [
        f"{h} S2: {s2['requests']} short requests ({s2['audio_s']:.0f} s of audio), {how}",
        "",
        f"Each cell: aggregate x real time (its ratio to the peer server) · CPU s/audio s · p50 / p95 latency in "
        f"seconds, by number of concurrent {unit} (each the fastest of {s2.get('rounds', 1)} round(s)); - : not "
        "run.",
        "",
        f"| configuration | {' | '.join(f'{n} {unit}' for n in levels)} |",
        f"| --- | {' | '.join('---:' for _ in levels)} |",
    ]
    for name, by_n in runs.items():
        cells = []
        for n in levels:
            r = by_n.get(str(n))
            if r is None:
                cells.append("-")
                continue
            base = runs[peer].get(str(n), {}).get("x_real_time") if peer else None
            errors = f" ({r['errors']} errors)" if r.get("errors") else ""
            cells.append(
                f"{_x(r['x_real_time'])} ({_ratio(r['x_real_time'], base)}) · {_cpu(r['cpu_s_per_audio_s'])} "
                f"· {r['p50_s']:.1f} / {r['p95_s']:.1f}{errors}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    wer = [(name, by_n[str(n)].get("wer")) for name, by_n in runs.items() for n in levels[-1:] if str(n) in by_n]
    if any(w is not None for _, w in wer):
        lines += ["", f"WER at {levels[-1]} {unit}: " + ", ".join(f"{name} {_pct(w)}" for name, w in wer) + "."]
    return [*lines, ""]


def s3_table(s3: dict[str, Any], h: str) -> list[str]:
    lines = [
        f"{h} S3: word error rate on {s3['clips']} clips with exact references ({s3['audio_s']:.0f} s)",
        "",
        "One request at a time, clip by clip through every configuration in turn (so x real time here is the "
        "single-request speed on short inputs). *Noisy*: the same clips with white noise at 0 dB SNR, where the "
        "temperature fallback triggers; *fallbacks*: chunks decoded again at a higher temperature.",
        "",
        "| configuration | WER | x real time | CPU s/audio s | fallbacks | WER, noisy | fallbacks, noisy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    noisy = s3.get("noisy_runs", {})
    for name, r in s3["runs"].items():
        n = noisy.get(name)
        tail = f"{_pct(n['wer'])} | {_n(n['fallbacks'])}" if n else "- | -"
        lines.append(
            f"| {name} | {_pct(r['wer'])} | {_x(r['x_real_time'])} | {_cpu(r['cpu_s_per_audio_s'])} "
            f"| {_n(r['fallbacks'])} | {tail} |"
        )
    return [*lines, ""]


def s4_table(s4: dict[str, Any], h: str) -> list[str]:
    lines = [
        f"{h} S4: {s4['jobs']} jobs ({s4['audio_s']:.0f} s of audio) on the local endpoint (`koe serve`'s app, jobs "
        f"API, worker_concurrency {s4['worker_concurrency']}, format {s4['format']})",
        "",
        "*All queued at once*: every job submitted together, then awaited; *one at a time*: submit, wait for it "
        "to finish, then the next. x real time from the first submission to the last completion (client clock); "
        "*vs koe S2*: against koe's plain-text figure in S2 at the same concurrency (worker_concurrency clients "
        "for the queue, 1 client one at a time); latency: submission to completion (server clock).",
        "",
        "| configuration | x real time | CPU s/audio s | vs koe S2 | p50 / p95 s | WER | mean batch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in s4["runs"].items():
        ref = r.get("s2_reference") or {}
        versus = f"{_ratio(r['x_real_time'], ref.get('x_real_time'))} (S2, {ref['clients']} clients)" if ref else "-"
        lines.append(
            f"| {name} | {_x(r['x_real_time'])} | {_cpu(r['cpu_s_per_audio_s'])} | {versus} "
            f"| {r['p50_s']:.1f} / {r['p95_s']:.1f} | {_pct(r['wer'])} | {_n(r.get('mean_batch'))} |"
        )
    return [*lines, ""]


def draw(results: dict[str, Any], path: Path) -> bool:
    """The chart: S2 throughput against concurrency, S1 bars. False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    s2, s4 = results.get("S2"), results.get("S4")
    ax = axes[0]
    if s2:
        levels = s2["levels"]
        for name, by_n in s2["runs"].items():
            shown = [n for n in levels if str(n) in by_n]
            ax.plot(shown, [by_n[str(n)]["x_real_time"] for n in shown], "o-", label=name)
        if s4:
            for name, r in s4["runs"].items():
                n = s4["worker_concurrency"] if "queued" in name else 1
                ax.plot([n], [r["x_real_time"]], "*", markersize=12, label=f"S4 {name}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(n) for n in levels])
        ax.set_xlabel(f"concurrent {s2.get('unit', 'clients')}")
        ax.set_ylabel("aggregate x real time")
        ax.set_title(f"S2: {s2['requests']} short requests")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    s1 = results.get("S1")
    ax = axes[1]
    if s1:
        names = list(s1["runs"])
        values = [s1["runs"][n]["x_real_time"] for n in names]
        ax.barh(names, values, color="tab:blue")
        ax.invert_yaxis()
        ax.set_xlabel("x real time")
        ax.set_title(f"S1: one long file ({s1['audio_s']:.0f} s)")
        ax.tick_params(axis="y", labelsize=7)
    run = results["run"]
    fig.suptitle(f"koe benchmark: {run['model']} on {run['device']} ({results['hardware']['cpu']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
