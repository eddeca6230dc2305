"""Scaling settings from numbers, and what they cost: `koe deploy --throughput 40 --max-wait 10m`.

Inputs: the speed of one instance (audio seconds per second, a figure you measured, e.g. with `koe transcribe`
on the instance type, or `make bench`), the length of a typical file, and how long a request may wait.

    MaxConcurrentInvocationsPerInstance = enough files in flight to fill one batch of 30 s chunks
                                          (ceil(batch / chunks per file)), at least 2 so that the next file
                                          downloads while one is transcribed, at most the batch size
    target backlog per instance T       = the queue one instance clears within the wait goal:
                                          floor(max_wait * speed / typical file length), at least 1
                                          (a file queued behind T others waits about T * length / speed)

Costs (shown in the plan; nothing here calls AWS): the instance price per hour from `PRICES` (a dated table,
overridable with --price), the cold start (assumed 10 min until measured: docs/deploy.md "Cold start"), and
the idle tail before scale-in (target tracking's scale-in alarm waits for 15 one-minute datapoints under the
target; `koe status` shows the actual alarm).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from koe.errors import OptionsError

# SageMaker real-time/async hosting, on-demand, us-east-1, USD per instance-hour. Written 2026-11-29 from
# https://aws.amazon.com/sagemaker/pricing/ as last seen by the author, NOT re-checked against the live page
# (no network where this was written). Prices differ by region and change: pass --price for yours.
PRICES_AS_OF = "2026-11-29 (us-east-1 list prices, unverified; pass --price)"
PRICES = {
    "ml.g4dn.xlarge": 0.7364, "ml.g4dn.2xlarge": 1.0528, "ml.g5.xlarge": 1.408, "ml.g5.2xlarge": 1.515,
    "ml.g6.xlarge": 1.0064, "ml.c5.xlarge": 0.204, "ml.c5.2xlarge": 0.408, "ml.m5.large": 0.115,
    "ml.m5.xlarge": 0.23,
}  # fmt: skip
ASSUMED_COLD_START_S = 600  # 5 to 10 minutes: docs/deploy.md, an estimate until you time yours
IDLE_TAIL_S = 15 * 60  # target tracking's scale-in alarm: 15 one-minute datapoints below the target
CHUNK_S = 30.0  # Whisper's window: one batch item


def parse_duration(text: str) -> float:
    """Seconds from "90s", "10m", "1h30m", "2h" or a plain number of seconds."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", value)
    if not value or parts is None or not any(parts.groups()):
        raise OptionsError(f"duration: {text!r} is not like 90s, 10m, 1h30m")
    hours, minutes, seconds = (float(g or 0) for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class Sizing:
    max_concurrent: int
    target_backlog: float
    reason: str


def derive(*, speed: float, max_wait_s: float, typical_audio_s: float, batch_size: int) -> Sizing:
    """The two scaling settings from the instance's speed, the wait goal and the typical file (see module doc)."""
    if speed <= 0 or max_wait_s <= 0 or typical_audio_s <= 0 or batch_size < 1:
        raise OptionsError("sizing: speed, --max-wait, --typical-audio and the batch size must be positive")
    chunks = max(1.0, typical_audio_s / CHUNK_S)
    concurrent = min(max(2, math.ceil(batch_size / chunks)), max(2, batch_size))
    per_file_s = typical_audio_s / speed
    backlog = max(1, math.floor(max_wait_s / per_file_s))
    reason = (
        f"{speed:g}x real time, {typical_audio_s / 60:g} min files ({per_file_s:.0f} s each on one instance), "
        f"wait goal {max_wait_s / 60:g} min, batch {batch_size}"
    )
    return Sizing(concurrent, float(backlog), reason)


def price_for(instance_type: str, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "given"
    price = PRICES.get(instance_type)
    return price, (f"table of {PRICES_AS_OF}" if price is not None else "unknown: pass --price")


def cost_notes(
    *,
    instance_type: str,
    speed: float | None,
    price_override: float | None = None,
    cold_start_s: float | None = None,
    min_instances: int = 0,
    warm_hours_per_week: float = 0.0,
    burst_audio_h: float = 1.0,
) -> list[str]:
    """The plan's cost lines."""
    price, source = price_for(instance_type, price_override)
    if price is None:
        return [f"cost: no price for {instance_type} ({source})"]
    cold = cold_start_s if cold_start_s is not None else ASSUMED_COLD_START_S
    cold_label = "given" if cold_start_s is not None else "assumed; time yours"
    lines = [
        f"cost: {instance_type} ${price:.4f}/h ({source}); cold start {cold / 60:.0f} min ({cold_label}) = "
        f"${price * cold / 3600:.2f}; idle tail before scale-in ~{IDLE_TAIL_S // 60} min = "
        f"${price * IDLE_TAIL_S / 3600:.2f} per instance"
    ]
    if speed:
        per_audio_hour = price / speed
        busy_s = burst_audio_h * 3600 / speed
        burst = price * (cold + busy_s + IDLE_TAIL_S) / 3600
        lines.append(
            f"cost: ${per_audio_hour:.3f} per audio hour while busy ({speed:g}x real time); a burst of "
            f"{burst_audio_h:g} audio h from zero on one instance: {cold / 60:.0f} min start + "
            f"{busy_s / 60:.1f} min work + {IDLE_TAIL_S // 60} min idle tail = ${burst:.2f}"
        )
    else:
        lines.append("cost: pass --throughput (x real time, measured) for cost per audio hour and per burst")
    if min_instances:
        lines.append(f"cost: warm floor of {min_instances} instance(s) = ${min_instances * price * 24:.2f}/day")
    if warm_hours_per_week:
        lines.append(
            f"cost: scheduled warm hours {warm_hours_per_week:g} h/week = ${price * warm_hours_per_week:.2f}/week"
        )
    return lines
