"""Shared helpers. Every spec in specs/ is exercised through ZOO_SPECS."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
ZOO_SPECS = sorted(p.name for p in SPECS.glob("*.cnn"))
UPDATE_GOLDEN = os.environ.get("CNNDSL_UPDATE_GOLDEN") == "1"

# REFERENCES.md: parameters (and MACs where it gives them) of torchvision's models.
REFERENCE = {
    "lenet5": (61_706, None),
    "alexnet": (61_100_840, 714_188_480),
    "vgg11": (132_863_336, 7_609_090_048),
    "vgg16": (138_357_544, 15_470_264_320),
    "vgg19": (143_667_240, 19_632_062_464),
    "resnet18": (11_689_512, 1_814_073_344),
    "resnet34": (21_797_672, 3_663_761_408),
    "resnet50": (25_557_032, 4_089_184_256),
    "resnet101": (44_549_160, 7_801_405_440),
    "resnet152": (60_192_808, 11_513_626_624),
    "googlenet": (6_624_904, 1_498_376_192),
    "mobilenet_v1": (4_231_976, None),
    "mobilenet_v2": (3_504_872, 300_774_272),
    "efficientnet": (5_288_548, 385_814_752),  # B0 by default
    "densenet121": (7_978_856, 2_834_161_664),
    "squeezenet1_1": (1_235_496, 349_151_936),
    "regnet_y_400mf": (4_344_144, 401_842_848),
    "resnext50_32x4d": (25_028_904, 4_230_479_872),
    "wide_resnet50_2": (68_883_240, 11_398_021_120),
    "vgg16_bn": (138_365_992, 15_470_264_320),
    "inception_v3": (23_834_568, 5_713_216_096),
    "googlenet_aux": (13_004_888, 1_506_748_416),
    "inception_v3_aux": (27_161_264, None),  # torchvision 0.29.1, aux_logits=True
    "efficientnet_v2_s": (21_458_488, 2_849_895_872),
    "mobilenet_v3_large": (5_483_032, 216_589_760),
    "mobilenet_v3_small": (2_542_856, 56_510_400),
    "shufflenet_v2_x1_0": (2_278_604, 144_907_992),
    "convnext_tiny": (28_589_128, 4_455_531_264),
    "yolov8n": (3_157_200, None),  # Ultralytics' count (tests/test_yolov8.py runs it)
    # REFERENCES.md (aux_loss=False; no MACs given: ours are at the specs' 3 x 64 x 64)
    "fcn_resnet50": (32_957_013, None),
    "deeplabv3_resnet50": (39_638_869, None),
    "lraspp_mobilenet_v3_large": (3_221_538, None),
    # torchvision 0.29.1 with weights=None (tests/test_detection_heads.py runs them)
    "retinanet_resnet50_fpn": (34_068_119, None),
    "fcos_resnet50_fpn": (32_322_720, None),
}


def golden(path: Path, actual: str) -> None:
    """Compare with a golden file; CNNDSL_UPDATE_GOLDEN=1 rewrites it."""
    if UPDATE_GOLDEN or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        if not UPDATE_GOLDEN:
            pytest.fail(f"golden file {path} was missing and has been written; check it in")
    assert actual == path.read_text(), f"output differs from {path}"


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "cnndsl", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def path_without_dot(scratch: Path) -> str:
    """This $PATH with graphviz's `dot` hidden, all else as it was: a folder that holds a
    `dot` is replaced by a folder of links to everything else in it."""
    folders = []
    for i, folder in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        if folder and (Path(folder) / "dot").exists():
            shadow = scratch / f"path{i}"
            shadow.mkdir(parents=True)
            for entry in Path(folder).iterdir():
                if entry.name != "dot":
                    (shadow / entry.name).symlink_to(entry)
            folder = str(shadow)
        folders.append(folder)
    path = os.pathsep.join(folders)
    assert shutil.which("dot", path=path) is None
    return path


def save_with_random_norms(module, path: Path) -> None:
    """`module`'s weights saved to `path` (safetensors), its batch norms given running
    statistics that are not the identity, so that a wrong normalisation shows."""
    import torch
    from safetensors.torch import save_file
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


def import_file(path: Path, name: str = "generated_model"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
