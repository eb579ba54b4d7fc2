"""Running ONNX models with onnxruntime: provider choice, IO binding, benchmarking.

`auto` takes CUDA when onnxruntime-gpu and a GPU are present, else the CPU. A provider
asked for explicitly must be the one that runs: after creating the session we read back
its providers and refuse a silent fallback to the CPU.

On CUDA, cuDNN's convolution algorithm search is chosen deliberately: EXHAUSTIVE when
benchmarking (it times every algorithm once, at the first run, and keeps the fastest),
HEURISTIC for a single run (no search cost). Inputs and outputs are bound on the device
(IO binding) so timings measure the model, not host-device copies.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from .diagnostics import CnnError, Diagnostic

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


def _error(message: str, help: str | None = None) -> CnnError:
    return CnnError([Diagnostic(code="E-run", message=message, help=help)])


def available_providers() -> list[str]:
    import onnxruntime as ort
    return ort.get_available_providers()


def resolve_provider(requested: str) -> str:
    available = available_providers()
    if requested == "auto":
        return "cuda" if PROVIDERS["cuda"] in available and _gpu_present() else "cpu"
    if requested not in PROVIDERS:
        raise _error(f"unknown provider `{requested}`", help="auto, cpu, cuda or tensorrt")
    if PROVIDERS[requested] not in available:
        raise _error(f"the {requested} provider is not available in this onnxruntime "
                     f"(it has: {', '.join(available)})",
                     help="install the GPU build: pip install 'cnndsl[gpu]' (onnxruntime-gpu),"
                     " with a CUDA-capable GPU and driver" if requested != "cpu" else None)
    return requested


def _gpu_present() -> bool:
    try:
        import ctypes
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


@dataclass
class Session:
    """An onnxruntime session and the provider that actually runs it."""

    session: object
    provider: str  # cpu | cuda | tensorrt, read back from the session

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def input_shapes(self) -> list[list]:
        return [i.shape for i in self.session.get_inputs()]

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        feeds = self._feeds(inputs)
        if self.provider == "cpu":
            return self.session.run(None, feeds)
        binding = self._bind(feeds)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def _feeds(self, inputs) -> dict[str, np.ndarray]:
        """Inputs by name, as the contiguous float32 arrays the model takes."""
        return dict(zip(self.input_names, (np.ascontiguousarray(x, np.float32)
                                           for x in inputs)))

    def _bind(self, feeds: dict[str, np.ndarray]):
        import onnxruntime as ort
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        for output in self.session.get_outputs():
            binding.bind_output(output.name, "cuda", 0)
        return binding

    def benchmark(self, inputs: list[np.ndarray], runs: int, warmup: int = 3,
                  progress: bool = True) -> dict:
        """Latency percentiles (ms) and images/s; inputs stay on the device between runs."""
        feeds = self._feeds(inputs)
        if self.provider == "cpu":
            def call():
                self.session.run(None, feeds)
        else:
            binding = self._bind(feeds)

            def call():
                self.session.run_with_iobinding(binding)
                binding.synchronize_outputs()
        for _ in range(warmup):
            call()
        times = []
        bar = _Progress(runs, enabled=progress)
        for _ in range(runs):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
            bar.step()
        bar.close()
        times.sort()
        batch = inputs[0].shape[0]

        def pct(q):
            return 1000 * times[min(len(times) - 1, int(q * len(times)))]

        return {"provider": self.provider, "batch": batch, "runs": runs,
                "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
                "mean_ms": 1000 * statistics.fmean(times),
                "images_per_s": batch / statistics.median(times)}


def create_session(model: bytes | str, provider: str = "auto", threads: int | None = None,
                   benchmark: bool = False) -> Session:
    import onnxruntime as ort
    chosen = resolve_provider(provider)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    search = "EXHAUSTIVE" if benchmark else "HEURISTIC"
    providers = {
        "cpu": [PROVIDERS["cpu"]],
        "cuda": [(PROVIDERS["cuda"], {"cudnn_conv_algo_search": search}), PROVIDERS["cpu"]],
        "tensorrt": [PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]],
    }[chosen]
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise _error(f"onnxruntime could not load the model: {exc}") from None
    running = session.get_providers()[0]
    actual = next((k for k, v in PROVIDERS.items() if v == running), running)
    if actual != chosen:
        raise _error(f"asked for the {chosen} provider but onnxruntime runs on {actual}",
                     help="check the GPU driver and CUDA/cuDNN libraries")
    return Session(session, actual)


def random_inputs(shapes: list[tuple[int, ...]], batch: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, *s)).astype(np.float32) for s in shapes]


def read_input(path: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _error(f"cannot read {path}: {exc}") from None
    if array.shape == shape:
        array = array[None]
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != tuple(shape):
        raise _error(f"{path} holds an array of shape {array.shape}; the model takes "
                     f"N x {' x '.join(map(str, shape))}")
    return array.astype(np.float32)


class _Progress:
    """A one-line progress bar on stderr, only when it is a terminal."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done = total, 0
        self.enabled = enabled and sys.stderr.isatty() and not os.environ.get("CI")
        self.last = 0.0

    def step(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.1 or self.done == self.total):
            self.last = now
            filled = int(30 * self.done / self.total)
            sys.stderr.write(f"\r  [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{self.done}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
