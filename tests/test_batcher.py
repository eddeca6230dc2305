"""Cross-request batching: the scheduler with a fake runner (grouping, fairness, isolation, back-pressure),
then the real tiny.en model through `Engine.transcribe` (content, order, fallback, word timings)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import Clip
from koe.audio import Audio, decode
from koe.batcher import Batcher, Requeue, Ticket
from koe.engine import Engine
from koe.errors import EngineError
from koe.options import parse_options
from koe.pipeline import make_batcher, transcribe_batched
from koe.scoring import wer

# -- the scheduler, with a fake runner ----------------------------------------------------------------


class FakeRunner:
    """Answers payload * 10; records every batch; fails a batch holding "bad"; can hold batches back."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[tuple[Hashable, list[object]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def run(self, key: Hashable, payloads: Sequence[object]) -> list[object]:
        self.gate.wait()
        self.batches.append((key, list(payloads)))
        time.sleep(self.delay)
        if "bad" in payloads:
            raise RuntimeError("cannot decode this chunk")
        answers: list[object] = []
        for p in payloads:
            if isinstance(p, tuple) and p[0] == "again":  # ("again", n): requeue under key "k2" once
                answers.append(Requeue("k2") if key != "k2" else p[1] * 10)
            elif p == "broken":
                answers.append(ValueError("broken output"))
            else:
                answers.append(p * 10 if isinstance(p, int) else p)
        return answers


def _run_requests(batcher: Batcher[object, object], requests: list[list[tuple[Hashable, object]]]) -> list[object]:
    """Each request in its own thread: submit all items, then wait for all; returns results or the error."""
    start = threading.Barrier(len(requests))

    def one(items: list[tuple[Hashable, object]]) -> object:
        start.wait()
        try:
            with batcher.open() as ticket:
                handles = [ticket.submit(key, payload) for key, payload in items]
                return [ticket.wait(h, timeout=30) for h in handles]
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_batches_hold_items_of_several_requests_and_answers_keep_order() -> None:
    runner = FakeRunner(delay=0.02)
    batcher: Batcher[object, object] = Batcher(runner, batch_size=8, max_wait_s=0.05)
    requests = [[("k", r * 100 + i) for i in range(5)] for r in range(6)]
    results = _run_requests(batcher, requests)
    assert results == [[(r * 100 + i) * 10 for i in range(5)] for r in range(6)]
    assert batcher.stats.mixed_batches >= 1 and batcher.stats.items == 30
    assert batcher.stats.largest_batch <= 8
    assert any(len(set(rec.tickets)) > 1 for rec in batcher.history)
    batcher.close()


def test_only_items_with_equal_keys_share_a_batch() -> None:
    runner = FakeRunner(delay=0.01)
    batcher: Batcher[object, object] = Batcher(runner, batch_size=16, max_wait_s=0.05)
    keys = ["beam5/t0", "beam1/t0", "beam5/t0.2"]
    requests = [[(keys[(r + i) % 3], (r, keys[(r + i) % 3])) for i in range(4)] for r in range(6)]
    results = _run_requests(batcher, requests)
    assert results == [[(r, keys[(r + i) % 3]) for i in range(4)] for r in range(6)]
    for key, payloads in runner.batches:
        assert {p[1] for p in payloads} == {key}  # type: ignore[index]
    batcher.close()


def test_a_failing_item_fails_only_its_own_request() -> None:
    runner = FakeRunner(delay=0.01)
    batcher: Batcher[object, object] = Batcher(runner, batch_size=8, max_wait_s=0.05)
    requests = [[("k", 1), ("k", 2)], [("k", 3), ("k", "bad"), ("k", 4)], [("k", 5)], [("k", "broken")]]
    results = _run_requests(batcher, requests)
    assert results[0] == [10, 20] and results[2] == [50]
    assert isinstance(results[1], EngineError) and "cannot decode" in str(results[1])
    assert isinstance(results[3], EngineError) and "broken output" in str(results[3])
    assert batcher.stats.failed_items == 2
    batcher.close()


def test_long_requests_do_not_starve_short_ones() -> None:
    runner = FakeRunner(delay=0.01)
    batcher: Batcher[object, object] = Batcher(runner, batch_size=4, max_wait_s=0.0, max_queued_per_request=40)
    runner.gate.clear()  # hold the scheduler until both requests are queued
    long_ticket, short_ticket = batcher.open(), batcher.open()
    long_handles = [long_ticket.submit("k", i) for i in range(40)]
    time.sleep(0.05)  # the scheduler has taken its first batch (all from the long request) and waits
    short_handle = short_ticket.submit("k", 1000)
    runner.gate.set()
    assert short_ticket.wait(short_handle, timeout=10) == 10_000
    order = [p for _, payloads in runner.batches for p in payloads]
    assert order.index(1000) <= 8  # in the second batch, not after the long request's 40 items
    assert [long_ticket.wait(h, timeout=10) for h in long_handles] == [i * 10 for i in range(40)]
    batcher.close()


def test_the_queue_is_bounded() -> None:
    runner = FakeRunner()
    batcher: Batcher[object, object] = Batcher(
        runner, batch_size=2, max_wait_s=0.0, max_queued=4, max_queued_per_request=3
    )
    runner.gate.clear()
    a, b = batcher.open(), batcher.open()
    handles = [a.submit("k", 0)]  # the scheduler takes this one and blocks in the runner
    time.sleep(0.05)
    handles += [a.submit("k", i) for i in range(1, 4)]
    with pytest.raises(TimeoutError):  # this request already has 3 queued
        a.submit("k", 99, timeout=0.1)
    b.submit("k", 7)  # another request still gets in: 4 queued in all
    with pytest.raises(TimeoutError):  # now the whole queue is full
        b.submit("k", 8, timeout=0.1)
    assert batcher.queued == 4
    runner.gate.set()
    assert [a.wait(h, timeout=10) for h in handles] == [0, 10, 20, 30]
    batcher.close()


def test_requeued_items_are_batched_again_under_their_new_key() -> None:
    runner = FakeRunner(delay=0.01)
    batcher: Batcher[object, object] = Batcher(runner, batch_size=8, max_wait_s=0.05)
    results = _run_requests(batcher, [[("k", ("again", 1)), ("k", 2)], [("k", ("again", 3))]])
    assert results == [[10, 20], [30]]
    assert batcher.stats.requeued == 2
    k2 = [payloads for key, payloads in runner.batches if key == "k2"]
    assert k2 and all(p[0] == "again" for batch in k2 for p in batch)  # type: ignore[index]
    batcher.close()


def test_closing_fails_waiting_requests() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    batcher: Batcher[object, object] = Batcher(runner, batch_size=1, max_wait_s=0.0)
    ticket = batcher.open()
    first, second = ticket.submit("k", 1), ticket.submit("k", 2)
    time.sleep(0.05)
    threading.Timer(0.1, runner.gate.set).start()
    batcher.close()
    with pytest.raises(EngineError, match="closed"):
        ticket.wait(second, timeout=5)
    assert ticket.wait(first, timeout=5) == 10  # the batch already running finished
    with pytest.raises(EngineError):
        batcher.open()


# -- the real model ---------------------------------------------------------------------------------


def _clip(manifest: list[Clip], name: str) -> Clip:
    return next(c for c in manifest if c.path.name == name)


def test_concurrent_requests_share_batches_and_keep_their_own_text(
    engine: Engine, manifest: list[Clip], jfk: Path
) -> None:
    names = ["ljspeech_LJ001-0001.flac", "ls_dev-clean_1272-128104-0000.wav", "azure_whatstheweatherlike.wav"]
    clips = [_clip(manifest, n) for n in names]
    audios = [decode(jfk)] + [decode(c.path) for c in clips]
    refs = ["And so my fellow Americans, ask not what your country can do for you, ask what you can do for "
            "your country."] + [c.reference for c in clips]  # fmt: skip
    before = engine.batcher.stats.mixed_batches
    start = threading.Barrier(len(audios))

    def one(audio: Audio) -> str:
        start.wait()
        return str(engine.transcribe(audio, parse_options({"mode": "batched"})).text)

    with ThreadPoolExecutor(len(audios)) as pool:
        texts = list(pool.map(one, audios))
    assert "ask not what your country can do for you" in texts[0].lower()
    for ref, text in zip(refs, texts, strict=True):
        assert wer(ref, text) <= 0.15, (ref, text)
    assert engine.batcher.stats.mixed_batches > before


def test_batched_text_is_close_to_sequential_and_progress_advances(engine: Engine, manifest: list[Clip]) -> None:
    audio = decode(_clip(manifest, "librivox_shakespeare_sonnet_1.mp3").path)
    calls: list[float] = []
    batched = engine.transcribe(audio, parse_options({"mode": "batched"}), lambda d, t: calls.append(d))
    sequential = engine.transcribe(audio, parse_options({"mode": "sequential"}))
    assert wer(sequential.text, batched.text) <= 0.1
    assert calls == sorted(calls) and calls[-1] == audio.duration and len(calls) >= 2
    starts = [s.start for s in batched.segments]
    assert starts == sorted(starts) and all(s.end <= audio.duration + 0.01 for s in batched.segments)


def test_word_timestamps_increase(engine: Engine, jfk: Path) -> None:
    t = engine.transcribe(decode(jfk), parse_options({"mode": "batched", "word_timestamps": True}))
    words = t.words
    assert len(words) >= 20 and words[0].word.strip() == "And"
    assert all(w.start <= w.end for w in words)
    assert all(a.start <= b.start and a.end <= b.end for a, b in itertools.pairwise(words))
    assert words[0].start >= 0.0 and words[-1].end <= 11.01
    for seg in t.segments:  # each segment's words lie within it
        assert seg.words and seg.start <= seg.words[0].start and seg.words[-1].end <= seg.end


def test_temperature_fallback_triggers_on_a_forced_threshold(engine: Engine, jfk: Path) -> None:
    batcher = make_batcher(engine.model, batch_size=4)
    audio = decode(jfk)
    try:
        normal = transcribe_batched(engine.model, batcher, audio.samples, parse_options({"beam_size": 1}))
        assert normal.fallbacks == 0 and batcher.stats.requeued == 0
        assert all(s.temperature == 0.0 for s in normal.segments)
        # No result can reach this log-probability: every temperature is tried, then the best is kept.
        forced = parse_options({"beam_size": 1, "log_prob_threshold": -0.001, "temperature": "0|0.4|0.8"})
        result = transcribe_batched(engine.model, batcher, audio.samples, forced)
        assert result.fallbacks == 2 and batcher.stats.requeued == 2
        assert all(s.temperature == 0.8 for s in result.segments)
        assert "country" in " ".join(s.text for s in result.segments).lower()
        keys = [rec.key for rec in batcher.history]
        assert [k.temperature for k in keys[-3:]] == [0.0, 0.4, 0.8]  # type: ignore[attr-defined]
    finally:
        batcher.close()


def test_mixed_decode_settings_are_grouped(engine: Engine, jfk: Path) -> None:
    batcher = make_batcher(engine.model, batch_size=8, max_wait_s=0.5)
    audio = decode(jfk)
    settings = [{"beam_size": 1}, {"beam_size": 1, "initial_prompt": "Kennedy."}, {"beam_size": 2}, {"beam_size": 1}]
    start = threading.Barrier(len(settings))

    def one(values: dict[str, object]) -> str:
        start.wait()
        result = transcribe_batched(engine.model, batcher, audio.samples, parse_options(values))
        return " ".join(s.text for s in result.segments)

    try:
        with ThreadPoolExecutor(len(settings)) as pool:
            texts = list(pool.map(one, settings))
        assert all("ask not what your country" in t.lower() for t in texts)
        sizes = sorted(len(rec.tickets) for rec in batcher.history)
        assert sizes == [1, 1, 2]  # beam 1 twice together; beam 2 and the prompted one on their own
        beams = sorted((k.beam_size, k.prefix_len) for k in (rec.key for rec in batcher.history))  # type: ignore[attr-defined]
        assert beams[0] == (1, 0) and beams[-1][0] == 2
    finally:
        batcher.close()


def test_language_is_detected_per_request(base_engine: Engine, manifest: list[Clip], jfk: Path) -> None:
    ja = _clip(manifest, "common_voice_ja_24511055.mp3")
    audios = [decode(jfk), decode(ja.path)]
    with ThreadPoolExecutor(2) as pool:
        found = list(pool.map(lambda a: base_engine.transcribe(a, parse_options({"mode": "batched"})), audios))
    assert [t.language for t in found] == ["en", "ja"]
    assert "ask not" in found[0].text.lower() and found[1].text


def test_long_audio_is_planned_block_by_block(manifest: list[Clip]) -> None:
    import numpy as np

    from koe.audio import SAMPLE_RATE
    from koe.chunking import CHUNK_S, VAD_BLOCK_S, Plan, block_cuts, vad_options

    long = next(c for c in manifest if c.path.name == "en_asterisk_prompts_even.opus")
    samples = decode(long.path).samples
    assert len(samples) > 2 * VAD_BLOCK_S * SAMPLE_RATE
    cuts = block_cuts(samples)
    assert cuts[0] == 0 and cuts[-1] == len(samples) and len(cuts) >= 3 and cuts == sorted(cuts)
    plan = Plan(samples, vad_options(parse_options({})))
    chunks = list(plan.chunks())
    assert plan.speech and all(a["end"] <= b["start"] for a, b in zip(plan.speech, plan.speech[1:], strict=False))
    assert all(0 < c.duration <= CHUNK_S for c in chunks)
    offsets = np.cumsum([0.0] + [c.duration for c in chunks[:-1]])
    assert np.allclose([c.offset for c in chunks], offsets)  # speech time: the chunks back to back
    ends = [c.end for c in chunks]
    assert ends == sorted(ends) and ends[-1] <= len(samples) / SAMPLE_RATE


# -- regressions and scheduling rules (issue 12) ------------------------------------------------------


def _submit_in_thread(ticket: Ticket[object, object], payload: object) -> tuple[threading.Thread, list[BaseException]]:
    """Submit `payload` from another thread (where it may block); the list receives what it raises."""
    outcome: list[BaseException] = []

    def submit() -> None:
        try:
            ticket.submit("k", payload)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=submit)
    thread.start()
    time.sleep(0.05)
    return thread, outcome


def test_a_request_blocked_on_its_full_queue_wakes_when_its_chunk_fails() -> None:
    """It waited on the `_space` condition, which failing and closing did not notify: it hung forever."""
    runner = FakeRunner()
    runner.gate.clear()
    batcher: Batcher[object, object] = Batcher(runner, batch_size=1, max_wait_s=0.0, max_queued_per_request=1)
    ticket = batcher.open()
    ticket.submit("k", "bad")  # taken by the scheduler, held at the gate
    time.sleep(0.05)
    ticket.submit("k", 1)  # fills this request's queue
    thread, outcome = _submit_in_thread(ticket, 2)  # blocks: the queue is full
    assert thread.is_alive()
    runner.gate.set()  # the held chunk fails: its request fails, and the blocked submit must see it
    thread.join(5)
    assert not thread.is_alive(), "submit stayed blocked after its request failed"
    assert isinstance(outcome[0], EngineError) and "cannot decode" in str(outcome[0])
    batcher.close()


def test_a_request_blocked_on_a_full_queue_wakes_when_the_batcher_closes() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    batcher: Batcher[object, object] = Batcher(runner, batch_size=1, max_wait_s=0.0, max_queued_per_request=1)
    ticket = batcher.open()
    ticket.submit("k", 1)
    time.sleep(0.05)
    ticket.submit("k", 2)
    thread, outcome = _submit_in_thread(ticket, 3)
    threading.Timer(0.1, runner.gate.set).start()
    batcher.close()
    thread.join(5)
    assert not thread.is_alive() and isinstance(outcome[0], EngineError)


def test_a_failing_batch_is_split_in_halves_down_to_the_bad_item() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    batcher: Batcher[object, object] = Batcher(runner, batch_size=64, max_wait_s=0.2)
    tickets = [batcher.open() for _ in range(64)]
    handles = [t.submit("k", "bad" if i == 37 else i) for i, t in enumerate(tickets)]
    runner.gate.set()
    for i, (t, h) in enumerate(zip(tickets, handles, strict=True)):
        if i == 37:
            with pytest.raises(EngineError, match="cannot decode"):
                t.wait(h, timeout=10)
        else:
            assert t.wait(h, timeout=10) == i * 10
    # 1 + 2 per level of halving (64 -> 1 is 6 levels): 13 runs, not 1 + 64.
    assert len(runner.batches) <= 13
    assert batcher.stats.failed_items == 1
    batcher.close()


def test_a_requests_batch_size_never_exceeds_the_servers() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    batcher: Batcher[object, object] = Batcher(runner, batch_size=4, max_wait_s=0.05, batch_size_of=lambda key: 256)
    ticket = batcher.open()
    handles = [ticket.submit("k", i) for i in range(12)]
    runner.gate.set()
    assert [ticket.wait(h, timeout=10) for h in handles] == [i * 10 for i in range(12)]
    assert batcher.stats.largest_batch <= 4
    batcher.close()


def test_front_items_go_before_the_requests_other_items() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    batcher: Batcher[object, object] = Batcher(runner, batch_size=1, max_wait_s=0.0, max_queued_per_request=8)
    ticket = batcher.open()
    first = ticket.submit("k", 0)
    time.sleep(0.05)  # taken and held
    handles = [ticket.submit("k", i) for i in (1, 2, 3)]
    urgent = ticket.submit("k", 99, front=True)
    runner.gate.set()
    ticket.wait(urgent, timeout=10)
    for h in [first, *handles]:
        ticket.wait(h, timeout=10)
    order = [p for _, payloads in runner.batches for p in payloads]
    assert order[:2] == [0, 99]


def test_announced_items_are_waited_for_and_unannounced_ones_are_not() -> None:
    runner = FakeRunner()
    batcher: Batcher[object, object] = Batcher(runner, batch_size=4, max_wait_s=0.0, fill_wait_s=1.0)
    ticket = batcher.open()
    ticket.expect(4)
    handles = [ticket.submit("k", 0)]
    time.sleep(0.1)  # the scheduler waits: three more are announced
    handles += [ticket.submit("k", i) for i in (1, 2, 3)]
    assert [ticket.wait(h, timeout=10) for h in handles] == [0, 10, 20, 30]
    assert [len(p) for _, p in runner.batches] == [4]
    other = batcher.open()  # nothing announced: runs at once, alone
    started = time.monotonic()
    other.wait(other.submit("k", 5), timeout=10)
    assert time.monotonic() - started < 0.5
    batcher.close()


# -- no wasted work, no lost text (issue 12) -----------------------------------------------------------


def test_text_only_decoding_keeps_the_words_and_spans_the_chunks(engine: Engine, manifest: list[Clip]) -> None:
    clip = _clip(manifest, "librivox_shakespeare_sonnet_1.mp3")
    audio = decode(clip.path)
    timed = engine.transcribe(audio, parse_options({"mode": "batched"}))
    text_only = engine.transcribe(audio, parse_options({"mode": "batched", "timestamps": False}))
    assert wer(clip.reference, text_only.text) <= wer(clip.reference, timed.text) + 0.05
    assert wer(clip.reference, text_only.text) <= 0.25
    assert len(text_only.segments) < len(timed.segments)  # one segment per chunk, not per phrase
    ends = [s.end for s in text_only.segments]
    assert ends == sorted(ends) and text_only.segments[0].start >= 0 and ends[-1] <= audio.duration + 0.01
    # No timestamp tokens were decoded.
    timestamp_begin = 50363  # tiny.en's <|0.00|>
    assert all(t < timestamp_begin for s in text_only.segments for t in s.tokens)


class _Truncated:
    """A generation result cut to its first `keep` tokens (a model that stopped early)."""

    def __init__(self, result, keep: float) -> None:  # type: ignore[no-untyped-def]
        ids = list(result.sequences_ids[0])
        self.sequences_ids = [ids[: max(1, int(len(ids) * keep))]]
        self.scores = result.scores
        self.no_speech_prob = result.no_speech_prob


def test_a_text_only_chunk_that_stops_early_is_decoded_to_its_end(
    engine: Engine, manifest: list[Clip], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recipe's `without_timestamps=True` loses the rest of a window when the model ends it early; koe
    finds the text too short for the speech, locates where it stops, and decodes the rest."""
    from koe.runner import WhisperRunner

    clip = _clip(manifest, "librivox_shakespeare_sonnet_2.mp3")
    audio = decode(clip.path)
    real = WhisperRunner._generate
    calls: list[int] = []

    def stops_early(self, key, payloads, encoder_output):  # type: ignore[no-untyped-def]
        results = real(self, key, payloads, encoder_output)
        calls.append(len(payloads))
        if len(calls) == 1:  # the first batch: every chunk ends after 40% of its text
            return [_Truncated(r, 0.4) for r in results]
        return results

    monkeypatch.setattr(WhisperRunner, "_generate", stops_early)
    batcher = make_batcher(engine.model, batch_size=4)
    try:
        result = transcribe_batched(engine.model, batcher, audio.samples, parse_options({"timestamps": False}))
    finally:
        batcher.close()
    text = " ".join(s.text for s in result.segments)
    assert len(calls) >= 2  # the lost tails were decoded again
    assert wer(clip.reference, text) <= 0.3, text
    assert "cold" in text.lower()  # the sonnet's last word


def test_language_is_found_in_the_first_decodes_encoder_pass(base_engine: Engine, jfk: Path) -> None:
    batcher = make_batcher(base_engine.model, batch_size=4)
    try:
        result = transcribe_batched(base_engine.model, batcher, decode(jfk).samples, parse_options({}))
        assert result.language == "en" and result.language_probability > 0.5
        assert batcher.stats.batches == 1  # one encode + generate: no separate detection round trip
        assert "ask not what your country" in " ".join(s.text for s in result.segments).lower()
    finally:
        batcher.close()


def test_job_slots_follow_the_batch_size_unless_set() -> None:
    from koe.config import Settings
    from koe.engine import CPU_BATCH_SIZE, job_slots

    assert job_slots(Settings(device="cpu", batch_size=16)) == CPU_BATCH_SIZE  # a CPU batch holds 4
    assert job_slots(Settings(device="cpu", batch_size=2)) == 2
    assert job_slots(Settings(device="cuda", batch_size=32)) == 32  # a GPU batch: as many jobs as it holds
    assert job_slots(Settings(device="cpu", worker_concurrency=1)) == 1
