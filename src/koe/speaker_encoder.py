"""SpeakerEncoder: Resemblyzer's trained GE2E voice encoder, run in numpy (no torch).

The weights are `resemblyzer/pretrained.pt` from the `Resemblyzer` package on PyPI (0.1.4, Apache-2.0; a
3-layer LSTM of 256 units over 40 mel bands, a linear layer to 256 dimensions, ReLU, L2 norm; trained by
Resemble AI on LibriSpeech, VoxCeleb 1 and 2). That package depends on torch and librosa, so koe installs it
with `pip install --no-deps` (the Makefile does) and only reads its weights file: PyTorch's legacy
serialisation (a few pickles followed by the raw tensor storages), read here by an unpickler that can build
nothing but an OrderedDict of float tensors.

Features follow Resemblyzer's `wav_to_mel_spectrogram`: 16 kHz audio, 25 ms Hann windows every 10 ms
(centred, reflect-padded), power spectrum, 40 Slaney mel bands (the filters of faster-whisper's feature
extractor, which match librosa's), not logged. Inputs are partial utterances of 160 frames (1.6 s).
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor
from numpy.typing import NDArray

from koe.errors import ModelUnavailableError

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s: the length of the utterances the encoder was trained on
HIDDEN = 256
LAYERS = 3
TARGET_DBFS = -30.0  # Resemblyzer's volume normalisation target (it only ever raises the volume)

WEIGHTS_PACKAGE = "Resemblyzer"
WEIGHTS_VERSION = "0.1.4"
WEIGHTS_FILE = "resemblyzer/pretrained.pt"
INSTALL_HINT = f"pip install --no-deps {WEIGHTS_PACKAGE.lower()}=={WEIGHTS_VERSION}"

_MAGIC = 0x1950A86A20F9469CFC6C  # PyTorch's legacy serialisation
_PROTOCOL = 1001
_DTYPES: dict[str, type[np.floating[Any]]] = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
}

Array = NDArray[np.float32]


# Weights --------------------------------------------------------------------------------------------------


def weights_path() -> Path:
    """Where the installed Resemblyzer package keeps its weights (found without importing it: that would
    import torch)."""
    try:
        dist = metadata.distribution(WEIGHTS_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelUnavailableError(
            f"diarize: the speaker encoder's weights are not installed ({INSTALL_HINT})"
        ) from None
    path = Path(str(dist.locate_file(WEIGHTS_FILE)))
    if not path.is_file():
        raise ModelUnavailableError(f"diarize: {path} is missing ({INSTALL_HINT})")
    return path


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: type[np.floating[Any]]
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> Any:
    return _TensorRef(storage, offset, tuple(shape), tuple(stride))


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype: type[np.floating[Any]] = _DTYPES[name]


class _WeightsUnpickler(pickle.Unpickler):
    """Builds only what a state dict of float tensors needs; anything else in the file is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> _Storage:
        kind, storage_type, key, _location, numel, *_view = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return _Storage(str(key), storage_type.dtype, int(numel))


def read_state_dict(path: Path) -> dict[str, Array]:
    """The tensors of a PyTorch legacy-format checkpoint's `model_state`, as float32 numpy arrays."""
    data = path.read_bytes()
    stream = io.BytesIO(data)
    restricted = _WeightsUnpickler(stream)
    if restricted.load() != _MAGIC or restricted.load() != _PROTOCOL:
        raise ModelUnavailableError(f"diarize: {path} is not a PyTorch legacy checkpoint")
    sys_info = restricted.load()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian"):
        raise ModelUnavailableError(f"diarize: {path} was not saved little-endian")
    checkpoint = restricted.load()
    keys = restricted.load()
    buffers: dict[str, NDArray[Any]] = {}
    storages = {ref.storage.key: ref.storage for ref in _tensor_refs(checkpoint)}
    for key in keys:
        storage = storages[key]
        (numel,) = struct.unpack("<q", stream.read(8))
        itemsize = np.dtype(storage.dtype).itemsize
        buffers[key] = np.frombuffer(stream.read(numel * itemsize), dtype=storage.dtype, count=numel)
    state = checkpoint["model_state"] if isinstance(checkpoint, dict) else checkpoint
    out: dict[str, Array] = {}
    for name, ref in state.items():
        if isinstance(ref, _TensorRef):
            buf = buffers[ref.storage.key]
            itemsize = buf.itemsize
            view = np.lib.stride_tricks.as_strided(
                buf[ref.offset :], shape=ref.shape, strides=[s * itemsize for s in ref.stride]
            )
            out[name] = np.array(view, dtype=np.float32)
    return out


def _tensor_refs(obj: Any) -> list[_TensorRef]:
    if isinstance(obj, _TensorRef):
        return [obj]
    if isinstance(obj, dict):
        return [ref for value in obj.values() for ref in _tensor_refs(value)]
    return []


# Features -------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _mel_filters() -> Array:
    return FeatureExtractor.get_mel_filters(SAMPLE_RATE, N_FFT, N_MELS).astype(np.float32)  # type: ignore[no-any-return]


_WINDOW = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann, as librosa's


def mel_frames(samples: Array) -> Array:
    """(frames, 40) mel power spectrogram of 16 kHz mono samples, one frame per 10 ms (Resemblyzer's
    features). Needs at least N_FFT // 2 + 1 samples (the reflect padding)."""
    spectrum = FeatureExtractor.stft(samples.astype(np.float32), N_FFT, HOP, window=_WINDOW, return_complex=True)
    power = (np.abs(spectrum) ** 2).astype(np.float32)
    return (_mel_filters() @ power).T.astype(np.float32)  # type: ignore[no-any-return]


def normalize_volume(samples: Array, target_dbfs: float = TARGET_DBFS) -> Array:
    """Raise quiet audio to `target_dbfs` (RMS), as Resemblyzer prepares every utterance; never lowers it."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    if rms <= 1e-9:
        return samples
    change_db = target_dbfs - 20.0 * np.log10(rms)
    if change_db <= 0:
        return samples
    louder: Array = (samples * np.float32(10.0 ** (change_db / 20.0))).astype(np.float32)
    return louder


# The network ----------------------------------------------------------------------------------------------


def _gates_ifog(w: Array) -> Array:
    """PyTorch orders an LSTM's gates i, f, g, o; i, f, o, g puts the three sigmoid gates side by side."""
    i, f, g, o = np.split(w, 4, axis=-1)
    return np.ascontiguousarray(np.concatenate([i, f, o, g], axis=-1), dtype=np.float32)


class SpeakerEncoder:
    """Embeddings of 1.6 s partial utterances: unit vectors, close for the same voice."""

    def __init__(self, weights: dict[str, Array]) -> None:
        self.layers: list[tuple[Array, Array, Array]] = []
        for k in range(LAYERS):
            w_ih, w_hh = weights[f"lstm.weight_ih_l{k}"], weights[f"lstm.weight_hh_l{k}"]
            bias = weights[f"lstm.bias_ih_l{k}"] + weights[f"lstm.bias_hh_l{k}"]
            if w_hh.shape != (4 * HIDDEN, HIDDEN) or w_ih.shape[0] != 4 * HIDDEN:
                raise ModelUnavailableError(f"diarize: unexpected LSTM weight shape {w_hh.shape}")
            self.layers.append((_gates_ifog(w_ih.T), _gates_ifog(w_hh.T), _gates_ifog(bias)))
        self.linear_w = np.ascontiguousarray(weights["linear.weight"].T)
        self.linear_b = weights["linear.bias"]

    @classmethod
    def load(cls, path: Path | None = None) -> SpeakerEncoder:
        return cls(read_state_dict(path or weights_path()))

    def embed(self, mels: Array) -> Array:
        """(n, 256) unit embeddings of `mels`, shaped (n, frames, 40)."""
        if len(mels) == 0:
            return np.zeros((0, HIDDEN), np.float32)
        return self._forward(np.ascontiguousarray(np.transpose(mels, (1, 0, 2)), dtype=np.float32))

    def _forward(self, seq: Array) -> Array:
        """The LSTM over time-major (t, b, features); the last layer's final hidden state goes through linear,
        ReLU and L2 norm. In-place updates: the arrays are small, so allocation would dominate."""
        t, b, _ = seq.shape
        h = np.zeros((b, HIDDEN), np.float32)
        for w_ih, w_hh, bias in self.layers:
            projected = (seq.reshape(t * b, -1) @ w_ih).reshape(t, b, 4 * HIDDEN)
            projected += bias
            h = np.zeros((b, HIDDEN), np.float32)
            c = np.zeros((b, HIDDEN), np.float32)
            gates = np.empty((b, 4 * HIDDEN), np.float32)
            scratch = np.empty((b, HIDDEN), np.float32)
            outputs = np.empty((t, b, HIDDEN), np.float32)
            sig, cell = gates[:, : 3 * HIDDEN], gates[:, 3 * HIDDEN :]
            i, f, o = sig[:, :HIDDEN], sig[:, HIDDEN : 2 * HIDDEN], sig[:, 2 * HIDDEN :]
            for step in range(t):
                np.matmul(h, w_hh, out=gates)
                gates += projected[step]
                # sigmoid(x) = (tanh(x / 2) + 1) / 2: one ufunc pass, and no overflow warnings
                sig *= 0.5
                np.tanh(sig, out=sig)
                sig += 1.0
                sig *= 0.5
                np.tanh(cell, out=cell)
                c *= f
                np.multiply(i, cell, out=scratch)
                c += scratch
                np.tanh(c, out=scratch)
                np.multiply(o, scratch, out=h)
                outputs[step] = h
            seq = outputs
        raw: Array = np.maximum(h @ self.linear_w + self.linear_b, 0.0)
        norms = np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-9)
        unit: Array = (raw / norms).astype(np.float32)
        return unit


@lru_cache(maxsize=1)
def shared_encoder() -> SpeakerEncoder:
    """The process's one encoder (17 MB of weights, loaded on first use)."""
    return SpeakerEncoder.load()
