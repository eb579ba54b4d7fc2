"""The zoo against torchvision, as a table: for every spec with a torchvision counterpart,
its parameters and MACs, whether torchvision's parameter count is the same, and the
relative max difference of the PyTorch module and of onnxruntime from torchvision's own
model (random weights, batch-norm statistics randomised, loaded by `torchvision:NAME`).

    python tools/zoo_parity.py [SPEC_STEM ...]   # e.g. convnext_tiny mobilenet_v3_small
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="zoo_parity_")

import torch  # noqa: E402
from test_transfer import ZOO, cache, randomised, reference_outputs, relative  # noqa: E402

import cnndsl  # noqa: E402
from conftest import SPECS  # noqa: E402


def row(name: str, spec: str, sets: dict) -> str:
    reference = randomised(name)
    cache(reference, name)
    model = cnndsl.load(SPECS / spec, **sets)
    x = torch.randn(1, *model.inputs[0].shape, generator=torch.Generator().manual_seed(1))
    expected = reference_outputs(reference, x, len(model.ir.outputs))
    module = model.to_torch(f"torchvision:{name}").eval()
    with torch.no_grad():
        mine = module(x)
    mine = mine if isinstance(mine, tuple) else (mine,)
    session = model.onnx_session("cpu", weights=f"torchvision:{name}")
    theirs_params = sum(p.numel() for p in reference.parameters())
    loaded = set(model.weights_report.loaded.values())
    used = sum(p.numel() for n, p in reference.named_parameters() if n in loaded)
    unused = sorted({n.split(".")[0] for n, _ in reference.named_parameters() if n not in loaded})
    torch_diff = max(relative(a, b) for a, b in zip(mine, expected, strict=True))
    onnx_diff = max(relative(a, b) for a, b in zip(session.run(x.numpy()), expected,
                                                   strict=True))
    label = spec + "".join(f" {k}={v}" for k, v in sets.items())
    return (f"| `{label}` | {model.params:,} | {model.macs:,} | "
            f"{_same(model.params, theirs_params, used, unused)} | "
            f"{torch_diff:.1e} | {onnx_diff:.1e} |")


def _same(ours: int, theirs: int, used: int, unused: list[str]) -> str:
    if ours == theirs:
        return "yes"
    if ours == used:
        return f"yes, without {', '.join(unused)} ({theirs - used:,})"
    return f"no ({theirs:,})"


def main() -> None:
    wanted = set(sys.argv[1:])
    torch.set_num_threads(2)
    print("| spec | parameters | MACs | = torchvision | PyTorch rel. max diff | "
          "onnxruntime rel. max diff |")
    print("|---|---:|---:|---|---:|---:|")
    for name, spec, sets in ZOO:
        if not wanted or spec[:-4] in wanted:
            print(row(name, spec, sets), flush=True)


if __name__ == "__main__":
    main()
