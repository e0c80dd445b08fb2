"""Smart Turn v3: does the caller's audio sound like a finished turn? (numpy + ONNX Runtime)

The model (Daily's Smart Turn v3.2, BSD-2-Clause; a Whisper-tiny encoder with a linear head,
int8) takes the last 8 s of 16 kHz audio as 80 × 800 Whisper log-mel features and answers the
probability that the speaker has finished. Its ONNX file ships in the ``pipecat-ai`` wheel
(BSD-2-Clause); it is located through the package's metadata and never imported.

:func:`log_mel_features` is a numpy port of the Whisper feature extractor the model was trained
with (``transformers.WhisperFeatureExtractor(chunk_length=8)``: waveform normalised to zero mean
and unit variance, centred 400-point periodic-Hann STFT with hop 160, power spectrum, 80 Slaney
mel bands, log10 floored at 1e-10, clamped to the maximum minus 8, scaled as ``(x + 4) / 4``,
the last frame dropped). ``tests/unit/audio`` checks it against that reference's output.

One inference costs ~80 ms of CPU on a 2-vCPU EPYC (AVX2, no VNNI) whatever the length of the
turn: :class:`patterd.audio.batch_turn.TurnBatcher` runs it off the loop, only at candidate end
points, within a CPU budget.
"""

from __future__ import annotations

import threading
from importlib import metadata
from pathlib import Path
from typing import ClassVar, Final

import numpy as np

__all__ = ["MODEL_RATE", "MODEL_SECONDS", "SmartTurnModel", "log_mel_features",
           "model_input", "smart_turn_path"]

MODEL_RATE: Final = 16000
MODEL_SECONDS: Final = 8
_SAMPLES: Final = MODEL_RATE * MODEL_SECONDS     # 128000
_N_FFT: Final = 400
_HOP: Final = 160
_N_MELS: Final = 80
_FRAMES: Final = _SAMPLES // _HOP                # 800 (the STFT makes 801; the last is dropped)
_DIST: Final = "pipecat-ai"
_DATA: Final = "pipecat/audio/turn/smart_turn/data"
DEFAULT_FILE: Final = "smart-turn-v3.2-cpu.onnx"


def smart_turn_path(name: str = DEFAULT_FILE) -> Path:
    """The Smart Turn ONNX file inside the installed ``pipecat-ai`` distribution (found from
    its metadata: the package itself is never imported). Raises FileNotFoundError."""
    try:
        dist = metadata.distribution(_DIST)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the {_DIST} package (which ships {name}) is not installed; "
                                "install it, or set vad.turn_model to an .onnx path or false"
                                ) from None
    path = Path(str(dist.locate_file(f"{_DATA}/{name}")))
    if not path.is_file():
        raise FileNotFoundError(f"{name} not found in {_DIST} {dist.version} ({path})")
    return path


# --------------------------------------------------------------------------- features

def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = 3.0 * hz / 200.0
    log = hz >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4)),
                    mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)),
                    200.0 * mel / 3.0)


def _mel_filters() -> np.ndarray:
    """[80, 201] triangular filters on the Slaney scale, area-normalised (librosa's "slaney")."""
    bins = np.linspace(0.0, MODEL_RATE / 2, _N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(MODEL_RATE / 2), _N_MELS + 2))
    width = np.diff(edges)
    rise = (bins[None, :] - edges[:-2, None]) / width[:-1, None]
    fall = (edges[2:, None] - bins[None, :]) / width[1:, None]
    filters = np.maximum(0.0, np.minimum(rise, fall))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[:, None]


_MEL: Final = _mel_filters()
_WINDOW: Final = np.hanning(_N_FFT + 1)[:-1]     # periodic Hann (torch.hann_window)


def log_mel_features(audio: np.ndarray) -> np.ndarray:
    """float32 [N, 80, 800] features for ``audio``: [N, 128000] (or one [128000] row, giving
    [80, 800]) float samples at 16 kHz, already cut or padded to 8 s."""
    x = np.asarray(audio, dtype=np.float32)
    single = x.ndim == 1
    x = np.atleast_2d(x)
    if x.shape[1] != _SAMPLES:
        raise ValueError(f"expected rows of {_SAMPLES} samples, got {x.shape[1]}")
    out = np.empty((len(x), _N_MELS, _FRAMES), dtype=np.float32)
    for row, dest in zip(x, out):
        dest[...] = _features(row)
    return out[0] if single else out


def _features(x: np.ndarray) -> np.ndarray:
    """[80, 800] for one row of 128000 float32 samples."""
    x = (x - x.mean()) / np.sqrt(x.var() + np.float32(1e-7))
    # A short turn is mostly the zeros it was padded with: the frames that see only that
    # constant run are identical, so one of them is transformed for all (same values).
    differ = np.flatnonzero(x != x[0])
    lead = int(differ[0]) if len(differ) else len(x)   # samples equal to the first one
    pad = _N_FFT // 2
    # frame t sees x[t*160 - 200 : t*160 + 200] (reflected at the start)
    same = min((lead - pad) // _HOP + 1, _FRAMES) if lead > pad else 0
    first = max(same - 1, 0)             # the last constant frame stands for all of them
    padded = np.pad(x.astype(np.float64), (pad, pad), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[first * _HOP::_HOP]
    frames = frames[: _FRAMES - first]
    spectrum = np.fft.rfft(frames * _WINDOW, axis=-1)             # [800 - first, 201]
    power = spectrum.real ** 2 + spectrum.imag ** 2
    mel = np.empty((_FRAMES, _N_MELS), dtype=np.float64)
    np.matmul(power, _MEL.T, out=mel[first:])
    mel[:first] = mel[first]
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return ((log.T + 4.0) / 4.0).astype(np.float32)


def model_input(pcm: bytes, rate: int) -> np.ndarray:
    """s16le ``pcm`` at ``rate`` Hz → the model's 8 s of 16 kHz float32: its last 8 s, or all
    of it left-padded with zeros (as the model was trained)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) * np.float32(1.0 / 32768.0)
    if rate != MODEL_RATE:
        import soxr  # the same HQ resampler the reference implementation uses

        x = soxr.resample(x, rate, MODEL_RATE, quality="HQ").astype(np.float32, copy=False)
    if len(x) >= _SAMPLES:
        return x[-_SAMPLES:]
    out = np.zeros(_SAMPLES, dtype=np.float32)
    out[_SAMPLES - len(x):] = x
    return out


# --------------------------------------------------------------------------- model

class SmartTurnModel:
    """One ONNX Runtime session of the Smart Turn model for the whole process (see :meth:`get`):
    one intra-op and one inter-op thread, no spinning, so it never takes more than the one
    thread it runs in."""

    _instances: ClassVar[dict[str, SmartTurnModel]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str | Path | None = None) -> None:
        import onnxruntime as ort  # deferred: the runtime is big

        self.path = Path(path) if path else smart_turn_path()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(self.path), opts,
                                             providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [_N_MELS, _FRAMES]:
            raise ValueError(f"{self.path} is not a Smart Turn v3 model (inputs "
                             f"{[(i.name, i.shape) for i in inputs]})")
        self._input = inputs[0].name
        # Its working memory is allocated by the first run: at start-up, not mid-call.
        self.run(np.zeros((1, _N_MELS, _FRAMES), dtype=np.float32))

    @classmethod
    def get(cls, path: str | Path | None = None) -> SmartTurnModel:
        """The process-wide instance for ``path`` (default: the bundled file), created once."""
        key = str(path or "")
        with cls._lock:
            if key not in cls._instances:
                cls._instances[key] = cls(path)
            return cls._instances[key]

    def run(self, features: np.ndarray) -> np.ndarray:
        """Probabilities [N] that each turn is complete, for features [N, 80, 800]. Releases
        the GIL while the model runs.

        One clip per run: onnxruntime's arena grows to the largest batch it has seen and
        never shrinks (+100 MiB after a batch of 4, reached whenever four callers happen to
        pause together — the steps of a soak's RSS), while one clip at a time holds ~14 MiB
        from the first run on, at the same CPU per verdict (this model is compute-bound:
        batching saved nothing measurable)."""
        out = np.empty(len(features), dtype=np.float32)
        for i in range(len(features)):
            (prob,) = self._session.run(None, {self._input: features[i:i + 1]})
            out[i] = np.asarray(prob, dtype=np.float32).reshape(-1)[0]
        return out

    def predict(self, clips: list[tuple[bytes, int]]) -> np.ndarray:
        """Probabilities [N] for ``(s16le pcm, rate)`` clips: resampling, features and the model
        in one call (what the batcher runs in its worker thread)."""
        audio = np.stack([model_input(pcm, rate) for pcm, rate in clips])
        return self.run(log_mel_features(audio))
