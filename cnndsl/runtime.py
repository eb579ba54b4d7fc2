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

import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
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

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def inputs_info(self) -> list[tuple[str, str, list]]:
        """(name, element type as ONNX writes it, shape with None or a name where symbolic)."""
        return [(i.name, i.type, i.shape) for i in self.session.get_inputs()]

    @property
    def runtime(self) -> str:
        """What runs the model, in words: `onnxruntime on cpu`."""
        return f"onnxruntime on {self.provider}"

    def describe(self) -> str:
        return f"{self.provider} ({self.session.get_providers()[0]})"

    def report(self) -> dict:
        """`run --json`'s account of what ran."""
        return {"runtime": "onnxruntime", "provider": self.provider}

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        feeds = self._feeds(inputs)
        with _run_errors():
            if self.provider == "cpu":
                return self.session.run(None, feeds)
            binding = self._bind(feeds)
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()

    def _caller(self, feeds: dict[str, np.ndarray]):
        """A function that runs the model once on `feeds` (bound on the device)."""
        if self.provider == "cpu":
            def call():
                self.session.run(None, feeds)
            return call
        binding = self._bind(feeds)

        def call_bound():
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return call_bound

    def _feeds(self, inputs) -> dict[str, np.ndarray]:
        """Inputs by name, as the contiguous float32 (or uint8 image) arrays the model
        takes."""
        return dict(zip(self.input_names, (np.ascontiguousarray(x) if x.dtype == np.uint8
                                           else np.ascontiguousarray(x, np.float32)
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
        call = self._caller(self._feeds(inputs))
        times = []
        bar = _Progress(runs, enabled=progress)
        with _run_errors(self.runtime.split()[0]):
            for _ in range(warmup):
                call()
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


@contextmanager
def _run_errors(runtime: str = "onnxruntime"):
    """onnxruntime's failures while running (a shape its kernels refuse, memory it cannot
    have) as located E-run errors, not tracebacks."""
    try:
        yield
    except MemoryError:
        raise _error(f"{runtime} ran out of memory running the model",
                     help="a smaller --batch, or a machine with more memory") from None
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        if isinstance(exc, CnnError):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _error(f"{runtime} failed running the model: {message}") from None


RUNTIMES = ("onnxruntime", "openvino")


def open_session(model: bytes | str, runtime: str = "onnxruntime", provider: str = "auto",
                 threads: int | None = None, precision: str | None = None,
                 benchmark: bool = False) -> Session:
    """A session on onnxruntime (`provider`) or OpenVINO's CPU plugin (`precision`, its
    INFERENCE_PRECISION_HINT: f32 unless asked); both answer `run`, `benchmark`,
    `runtime` and `report()` alike."""
    if runtime == "openvino":
        if provider not in ("auto", "cpu"):
            raise _error(f"the {provider} provider is onnxruntime's; OpenVINO runs here on "
                         "the CPU", help="leave out --provider, or use --runtime onnxruntime")
        from .openvino_runtime import create_openvino_session
        return create_openvino_session(model, precision or "f32", threads)
    if runtime != "onnxruntime":
        raise _error(f"unknown runtime `{runtime}`", help="onnxruntime or openvino")
    if precision not in (None, "f32"):
        raise _error(f"onnxruntime has no {precision} precision mode: it runs a model in "
                     "the types the file stores", help="--runtime openvino --precision "
                     f"{precision}, or compile --precision fp16 / --quantize int8")
    return create_session(model, provider, threads, benchmark)


def create_session(model: bytes | str, provider: str = "auto", threads: int | None = None,
                   benchmark: bool = False) -> Session:
    import onnxruntime as ort
    chosen = resolve_provider(provider)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # onnxruntime's own log lines carry ANSI colour whatever NO_COLOR says; what matters
    # of them reaches the user as the exception's message, in a located E-run
    ort.set_default_logger_severity(4)
    options.log_severity_level = 4
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


def model_inputs(session: Session, batch: int | None, have_input: bool) -> list[tuple]:
    """Each input's per-sample shape (None where symbolic), refusing what `run` cannot
    feed: no inputs, other element types than float, a size only an array can give, a
    batch the model does not take."""
    inputs = session.inputs_info()
    if not inputs:
        raise _error("the model has no inputs: there is nothing to feed it")
    shapes = []
    for name, kind, shape in inputs:
        if kind != "tensor(float)":
            raise _error(f"input `{name}` takes {kind}; `cnndsl run` feeds float images",
                         help="run it from Python with onnxruntime")
        first, *rest = shape or [None]
        dims = tuple(d if isinstance(d, int) else None for d in rest)
        if 0 in dims or first == 0:
            raise _error(f"input `{name}` has an axis of size 0 "
                         f"({' x '.join(map(str, shape))}): there is nothing to feed it")
        if None in dims and not have_input:
            raise _error(f"input `{name}` has a symbolic size ({' x '.join(map(str, rest))})",
                         help="give the data with --input FILE.npy")
        if isinstance(first, int) and batch is not None and first != batch:
            raise _error(f"input `{name}` takes batch {first} only, not {batch}",
                         help=f"use --batch {first}")
        shapes.append(dims)
    return shapes


def random_inputs(shapes: list[tuple[int, ...]], batch: int, seed: int = 0,
                  memory_limit: int | None = None) -> list[np.ndarray]:
    """Random float32 inputs, refused before anything is allocated when they need more
    than `memory_limit` bytes (the model's sizes are anyone's to write)."""
    from .checker import default_memory_limit
    from .report import human_bytes
    limit = default_memory_limit() if memory_limit is None else memory_limit
    need = sum(4 * batch * math.prod(s) for s in shapes)
    if need > limit:
        sizes = ", ".join(" x ".join(map(str, (batch, *s))) for s in shapes)
        raise CnnError([Diagnostic(
            code="E-limit", message=f"the model's inputs ({sizes}) need {human_bytes(need)} "
            f"as float32, over the limit of {human_bytes(limit)}",
            help="raise the limit with --memory-limit if the machine has the memory")])
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, *s), dtype=np.float32) for s in shapes]


MAX_INPUT_BYTES = 2**31  # an input larger than 2 GiB is not a test image


NPY_MAGIC = b"\x93NUMPY"


def read_input(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """An .npy array of numbers, its header checked before any data is read: a header can
    claim any shape."""
    from .files import open_regular
    try:
        with open_regular(path) as f:
            if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise CnnError([Diagnostic(
                    code="E-io", message=f"cannot read {path}: it is neither an .npy array "
                    "nor an image", help="give a .npy file (np.save), an image, or a "
                    "folder of images")])
            f.seek(0)
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                           np.lib.format.read_array_header_2_0)
            claimed, _, dtype = read_header(f)
            size = math.prod(claimed) * dtype.itemsize
            if dtype.kind not in "biuf" or dtype.fields is not None:
                raise ValueError(f"it holds {dtype} values, not numbers")
            if size > MAX_INPUT_BYTES or size > os.fstat(f.fileno()).st_size:
                raise ValueError(f"its header claims {' x '.join(map(str, claimed))} "
                                 f"values ({size:,} bytes), more than the file holds")
            f.seek(0)
            array = np.load(f, allow_pickle=False)
    except OSError as exc:
        raise _error(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, EOFError) as exc:
        raise _error(f"cannot read {path}: {exc}") from None
    def fits(dims) -> bool:
        return len(dims) == len(shape) and all(s is None or s == d for s, d in zip(shape, dims))
    if fits(array.shape):
        array = array[None]
    if array.ndim != len(shape) + 1 or not fits(array.shape[1:]):
        wanted = " x ".join("?" if d is None else str(d) for d in shape)
        raise _error(f"{path} holds an array of shape {array.shape}; the model takes "
                     f"N x {wanted}")
    return array


def input_warnings(path: str, array: np.ndarray, normalized: bool) -> list[str]:
    """What makes a float model's answer wrong without a word: integer pixels, or values
    in 0..255 where training saw 0..1 (`normalized`: the spec's training normalised its
    images, so other ranges are expected)."""
    if array.dtype.kind in "biu":
        top = int(array.max()) if array.size else 0
        return [f"{path} holds {array.dtype} values (0..{top}); the model takes float32, "
                "and training fed it images in 0..1: divide by 255 first"]
    if not normalized and array.size and float(np.nanmax(array)) > 1.0 + 1e-6:
        return [f"{path} holds values up to {float(np.nanmax(array)):g}; training fed the "
                "model images in 0..1: divide by 255 first"]
    return []


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
