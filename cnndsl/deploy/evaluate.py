"""`cnndsl eval MODEL.onnx --data DATA`: any .onnx file on a data set (its validation split
or the whole of a held-out folder, as `eval` of a spec chooses),
split as training split it (the seed and fraction its cnndsl metadata records; training's
defaults otherwise), preprocessed as evaluation preprocesses."""

from __future__ import annotations

from ..diagnostics import CnnError, Diagnostic


def evaluate_onnx(model: str | bytes, data: str, *, provider: str = "auto",
                  batch: int = 256, split: str | None = None, runtime: str = "onnxruntime",
                  precision: str | None = None) -> dict:
    import torch

    from ..training.data import DataError, load_data, only_classes
    from ..training.metrics import classification_report
    from ..training.run import default_split
    from .predict import onnx_predictor
    from .quantize import logits_of
    predictor = onnx_predictor(model, provider, runtime=runtime, precision=precision)
    info = predictor.info
    try:
        loaded = load_data(data, info.shape, val_fraction=info.val_split or 0.2,
                           seed=info.seed or 0)
        if info.classes and info.classes != loaded.train.classes:  # data_classes: a subset
            loaded = only_classes(loaded, tuple(info.classes))
    except DataError as exc:
        raise CnnError([Diagnostic(code="E-data", message=exc.message,
                                   help=exc.help or None)]) from None
    chosen, why = (split, None) if split is not None else default_split(loaded)
    val = loaded.part(chosen)
    prepare = predictor.prepare()

    class Runner:  # logits_of's session: numpy in, outputs out
        @staticmethod
        def run(x):
            return [predictor.forward(torch.from_numpy(x)).numpy()]
    logits = torch.from_numpy(logits_of(Runner, val.images, prepare, batch))
    if logits.shape[1] != len(val.classes):
        raise CnnError([Diagnostic(code="E-data", message=f"the model gives "
                                   f"{logits.shape[1]} scores; {loaded.source} has "
                                   f"{len(val.classes)} classes")])
    report = classification_report(logits, val.labels, val.classes)
    return {**report, "split": chosen, "split_default": why, "source": loaded.source,
            "runtime": predictor.runtime,
            "model_precision": info.precision or "fp32"}
