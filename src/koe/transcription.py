"""One transcription, the same at every door: check -> decode -> transcribe -> render.

The five doors (the SageMaker /invocations route, the OpenAI routes, the SageMaker handler module, `koe
transcribe` and the job workers) differ in where the audio and the options come from and where the text goes.
What they do with them is this sequence, written once:

1. `check`: the options are fitted to the formats the transcript will be written in (text and json show no
   times, so they get the faster text-only decoding), then the model refuses what it cannot do (an
   English-only model and Japanese) before any audio is read.
2. `Transcription.decode`: the input to 16 kHz mono, within the size and duration limits (koe.audio).
3. `Transcription.transcribe`: the model on the audio, with the checked options.
4. `render` (koe.formats): the transcript in each format.

An HTTP door runs step 2 and step 3 in worker threads, apart (the request's spooled body is gone before the
model starts); the others call `Transcription.run` for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from koe.audio import Audio, AudioLimits, AudioSource, MemoryClaim, decode
from koe.formats import fit_options, render
from koe.options import TranscribeOptions
from koe.transcript import Transcript

if TYPE_CHECKING:
    from koe.engine import Engine

Progress = Callable[[float, float], None]
"""Called with (seconds of audio done, seconds in all) as the model goes."""

__all__ = ["Transcription", "check", "render"]


@dataclass(frozen=True)
class Transcription:
    """A request that passed `check`: the model, and the options it will run with."""

    engine: Engine
    options: TranscribeOptions

    def decode(
        self,
        source: AudioSource,
        limits: AudioLimits,
        *,
        memory: MemoryClaim | None = None,
        check: Callable[[], None] | None = None,
    ) -> Audio:
        return decode(source, limits, memory=memory, check=check)

    def transcribe(self, audio: Audio, progress: Progress | None = None) -> Transcript:
        return self.engine.transcribe(audio, self.options, progress=progress)

    def run(
        self,
        source: AudioSource,
        limits: AudioLimits,
        *,
        memory: MemoryClaim | None = None,
        progress: Progress | None = None,
    ) -> Transcript:
        """Decode, then transcribe (blocking)."""
        return self.transcribe(self.decode(source, limits, memory=memory), progress)


def check(engine: Engine, options: TranscribeOptions, formats: Iterable[str | None]) -> Transcription:
    """Step 1: `options` fitted to the output `formats` and checked against `engine`'s model.

    A format not known yet (None: the SageMaker handler learns Accept only after the model ran) keeps the
    timestamps, so that any format can be written afterwards."""
    wanted = list(formats)
    fitted = options if None in wanted or not wanted else fit_options(options, [f for f in wanted if f])
    engine.check(fitted)
    return Transcription(engine, fitted)
