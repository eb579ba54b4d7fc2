"""`Model.fit` / `Model.evaluate` and the CLI's `train` / `eval`: config, data, weights and
the loop put together."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..diagnostics import CnnError, Diagnostic, printable_text
from . import tasks
from .outputs import output_names
from .spec import Overrides, TrainConfig, check_train, selected_layers


def train_config(model, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The model's `train` definition (or the defaults) with overrides, checked with the
    network (its task resolved): what `Model.train_config` keeps."""
    try:
        given = Overrides(getattr(model, "train_overrides", {}),
                          spans=getattr(model.train_overrides, "spans", {}))
        config = check_train(model.train_def, model.name, model.ir.params,
                             given.merged(overrides))
        return tasks.resolve(config, model.ir)
    except CnnError as exc:
        exc.sources = model.program.sources
        raise


def load_dataset(model, config: TrainConfig, data: str | Path | None):
    from .data import DataError
    source = data if data is not None else config.data
    if source is None:
        raise CnnError([Diagnostic(code="E-train", message="no data to train on",
                                   help="pass --data digits (or an image folder), or write "
                                   "`data: digits` in the `train` definition")])
    task = tasks.get(config.task)
    if data is None and source not in task.data_words and model.train_def is not None:
        base = Path(model.train_def.span.file).parent  # a folder named in the spec
        source = str(base / source)
    shape = model.inputs[0].shape
    if len(model.inputs) != 1 or len(shape) != 3:
        raise CnnError([Diagnostic(code="E-train", message="training needs one image input "
                                   "(C x H x W)", span=model.inputs[0].span)])
    try:
        return task.load_data(str(source), shape, config, getattr(model, "memory_limit", None))
    except DataError as exc:
        raise CnnError([Diagnostic(code="E-data", message=str(exc.message),
                                   help=exc.help or None)]) from None


def build_module(model, config: TrainConfig, weights, weights_from: str | None,
                 log: Callable[[str], None]):
    """The spec's module, fresh or holding `weights` (any naming; the `reinit` layers
    initialised afresh where they differ)."""
    if weights is None and weights_from is None:
        return model.to_torch()
    reinit = selected_layers(config.reinit, model.ir) if config.reinit else ()
    module = model.to_torch(weights, weights_from=weights_from, reinit=reinit,
                            seed=config.seed)
    log(model.weights_report.text())
    return module


def _beside_weights(model, overrides, dataset) -> dict[str, bytes]:
    """model.json: what `predict` with the spec and weights needs (classes, normalisation)."""
    from dataclasses import replace

    from ..deploy.describe import from_spec, sidecar_bytes
    from .folder import SIDECAR
    info = replace(from_spec(model, overrides), classes=list(dataset.train.classes))
    return {SIDECAR: sidecar_bytes(info)}


def fit_model(model, data=None, *, out: str | Path | None = None, device: str = "auto",
              resume: str | Path | None = None, weights=None, weights_from: str | None = None,
              progress: bool | None = None, log: Callable[[str], None] | None = None,
              overrides: dict | None = None, stop_at: tuple[int, int] | None = None,
              exist_ok: bool = False, new_folder: str | Path | None = None) -> dict:
    """Train; write into `out` (else, with `new_folder`, into a new folder named after it:
    runs/train, runs/train2, ...; else nowhere). `out` may hold another run only when it
    is the folder resumed or with `exist_ok` (folder.py)."""
    import torch

    from . import folder
    from .loop import Trainer, resolve_device
    log = log or (lambda line: print(printable_text(line), file=sys.stderr))
    if not is_main_rank():
        log = _quiet
    config = model.train_config(overrides)
    task = tasks.get(config.task)
    dataset = load_dataset(model, config, data)
    if dataset.skipped:
        log(f"warning: skipped {len(dataset.skipped)} unreadable file(s), e.g. "
            f"{dataset.skipped[0][0]}: {dataset.skipped[0][1]}")
    for warning in dataset.warnings:
        log(f"warning: {warning}")
    try:
        tasks.check_run(config, dataset, resolve_device(device))
        task.check_classes(config, model.ir, len(dataset.train.classes))
    except CnnError as exc:
        exc.sources = model.program.sources
        raise
    torch.manual_seed(config.seed)
    module = build_module(model, config, weights, weights_from, log)
    if weights is None and weights_from is None:
        task.initialise(module, model.ir)
    fingerprint = {"network": model.name, "params": model.params, "data": dataset.source,
                   "classes": dataset.train.classes, "train": len(dataset.train),
                   "config": config.model_dump(mode="json", exclude={  # where a loss was
                       # written is no setting: a renamed or re-commented spec resumes
                       "spans": True, "epochs": True, "workers": True, "cache": True,
                       "losses": {"__all__": {"span", "output_span"}}})}
    frozen = selected_layers(config.freeze, model.ir) if config.freeze else set()
    out = Path(out) if out is not None else None
    claim = None
    if out is not None or new_folder is not None:
        def claim():
            return folder.claim(out, default=Path(new_folder) if new_folder else None,
                                resume=Path(resume) if resume else None, exist_ok=exist_ok,
                                files=folder.run_files(task.outputs))
    try:
        trainer = Trainer(config, dataset, module, out=out, device=device,
                          progress_bar=progress, log=log, fingerprint=fingerprint,
                          stop_at=stop_at, frozen=frozen, claim=claim,
                          beside=_beside_weights(model, overrides, dataset),
                          one_value_norm=one_value_norm(model.ir))
    except CnnError as exc:  # shown with the spec's lines
        exc.sources = model.program.sources
        raise
    log(f"training {model.name} on {dataset.source}: {len(dataset.train)} train / "
        f"{len(dataset.val)} val images, {len(dataset.train.classes)} classes, "
        f"{trainer.dev.type}; {config.describe()}")
    if len(model.ir.outputs) > 1 and not config.losses:
        names = output_names(model.ir)
        log(f"note: the loss applies to `{names[0]}`, the first of {len(names)} outputs; "
            f"{', '.join(f'`{n}`' for n in names[1:])} get none (a loss per output: "
            f"`loss: {config.loss.name}({names[0]}) + 0.3 * {config.loss.name}({names[1]})`)")
    restore = task.adapt(module, model.ir)
    try:
        summary = trainer.fit(Path(resume) if resume else None)
    finally:
        restore()
    summary["module"] = module
    if model.weights_report is not None and weights is not None:
        summary["weights_report"] = model.weights_report.to_json()
    return summary


def one_value_norm(ir) -> tuple[str, Any] | None:
    """The first batch norm that normalises one value per channel (a 1 x 1 map, as after
    global pooling in DeepLabV3's ASPP), its name and span: it trains on 2 samples or
    more."""
    import math
    for node in ir.nodes:
        if node.op == "batchnorm" and math.prod(node.in_shapes[0][1:]) == 1:
            return ".".join(node.path), node.span
    return None


def is_main_rank() -> bool:
    """Under torchrun only rank 0 speaks and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def _quiet(line: str) -> None:
    pass


SPLITS = ("all", "val", "train")


def default_split(dataset) -> tuple[str, str]:
    """What `eval` scores without --split, and why: a held-out folder (no train/ and val/,
    or an .npz) whole; the validation part of data that has one of its own (train/ and
    val/) or that training splits (the bundled sets: digits, shapes)."""
    if dataset.presplit:
        return "val", "a folder with train/ and val/"
    path = Path(dataset.source.split(" (classes ")[0])
    if path.is_dir():
        return "all", "a folder without train/ and val/"
    if path.is_file():
        return "all", "an .npz file"
    return "val", str(path)  # a bundled set, split as training splits it


def evaluate_model(model, data=None, *, weights=None, device: str = "auto",
                   batch: int | None = None, overrides: dict | None = None,
                   weights_from: str | None = None, onnx: str | bytes | None = None,
                   predictions: Path | None = None, split: str | None = None) -> dict:
    """The task's metrics on a part of `data` (`split`: all, val or train; by default as
    `default_split` says), of the spec's module (with `weights`) or of an ONNX file run by
    onnxruntime (`onnx`: its path or bytes); `predictions`: a folder for the task's
    per-sample outputs (segmentation: colour masks, overlays)."""
    from .loop import Trainer
    config = model.train_config(overrides)
    if batch is not None:
        config = config.model_copy(update={"batch": batch})
    task = tasks.get(config.task)
    dataset = load_dataset(model, config, data)
    if split is not None and split not in SPLITS:
        raise CnnError([Diagnostic(code="E-arg", message=f"no split `{split}`",
                                   help="all, val or train")])
    chosen, why = (split, None) if split is not None else default_split(dataset)
    try:
        task.check_classes(config, model.ir, len(dataset.val.classes))
    except CnnError as exc:
        exc.sources = model.program.sources
        raise
    if onnx is not None:
        from .loop import OnnxModule
        module, device = OnnxModule(onnx), "cpu"
    else:
        module = build_module(model, config, weights, weights_from, lambda line: None)
        task.adapt(module, model.ir)  # a module of its own, used here only
    if predictions is not None and not hasattr(task, "write_predictions"):
        raise CnnError([Diagnostic(code="E-train", message=f"--predictions: {config.task} "
                                   "has no per-sample outputs to write")])
    trainer = Trainer(config, dataset, module, device=device)
    part = dataset.part(chosen)
    report = trainer.evaluate(module.to(trainer.dev), part)
    report.pop("logits", None)
    if predictions is not None:
        trainer.write_predictions(module, part, predictions)
    trainer.close()
    report["task"] = config.task
    report["split"] = chosen
    report["split_default"] = why  # None when asked for
    report["source"] = dataset.source
    return report
