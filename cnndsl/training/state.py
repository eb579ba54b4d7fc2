"""`state.pt`, the training state `--resume` reads: checked field by field before any of
it is used.

The file loads with `weights_only=True`, so it can hold no code, but it can hold anything
else made of tensors, numbers, strings, lists and dicts. Every field is checked against
what this run would save (the fingerprint of its settings, the progress's counters in
range, the module's names and shapes, the optimizer's groups and per-parameter state, the
schedule's and scaler's keys, the random generator's size), and what is wrong is named in
one error, "not a cnndsl training state: ...", or, when the file is sound but was saved
by another setup, as the setting that differs.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ..diagnostics import CnnError, Diagnostic
from ..files import load_json

KEYS = ("model", "optimizer", "schedule", "scaler", "rng", "progress", "fingerprint")
OPTIONAL = ("ema",)  # the average of the weights, with `ema:`
COUNTERS = ("epoch", "step", "correct", "seen", "samples", "best_epoch", "bad_epochs")
AMOUNTS = ("loss_sum", "loss_den", "lr")
MOST_EPOCHS = 1_000_000  # as --epochs


class NotAStateError(Exception):
    """What is wrong with the file, in a few words."""


def read_state(path: Path) -> dict[str, Any]:
    """The file's contents (weights_only), or an error that names the file; a file that
    would need more than tensors and plain values is refused unread."""
    from ..files import open_regular
    try:
        with open_regular(path) as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CnnError([Diagnostic(
            code="E-train", message=f"nothing to resume in {path.parent}: no {path.name}",
            help="resume from the --out folder of an earlier `cnndsl train`")]) from None
    except OSError as exc:
        raise CnnError([Diagnostic(code="E-train", message=f"cannot read the training state "
                                   f"{path}: {exc.strerror or exc}")]) from None
    except pickle.UnpicklingError:
        raise not_a_state(path, "it holds Python objects other than tensors and plain "
                          "values, and is refused unread (loading them could run code)") \
            from None
    except Exception as exc:  # noqa: BLE001 - a damaged file of any kind
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise not_a_state(path, f"it cannot be read ({first})") from None


def not_a_state(path: Path, what: str) -> CnnError:
    return CnnError([Diagnostic(
        code="E-train", message=f"{path} is not a cnndsl training state: {what}",
        help="`cnndsl train --out DIR` writes DIR/state.pt; train afresh into a new --out "
        "folder")])


def check_top(state: Any) -> tuple[dict, dict]:
    """The state's keys, and its fingerprint and progress decoded."""
    if not isinstance(state, dict):
        raise NotAStateError(f"it holds a {type(state).__name__}, not a dict")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise NotAStateError(f"no {', '.join(f'`{k}`' for k in missing)}")
    extra = sorted(str(k) for k in state if k not in KEYS + OPTIONAL)
    if extra:
        raise NotAStateError(f"unknown field {', '.join(f'`{k}`' for k in extra[:3])}")
    return _json_dict(state, "fingerprint"), _json_dict(state, "progress")


def _json_dict(state: dict, key: str) -> dict:
    text = state[key]
    if not isinstance(text, str):
        raise NotAStateError(f"`{key}` is a {type(text).__name__}, not JSON text")
    try:
        value = load_json(text)
    except ValueError:
        raise NotAStateError(f"`{key}` is not valid JSON") from None
    if not isinstance(value, dict):
        raise NotAStateError(f"`{key}` is not a JSON object")
    return value


def fingerprint_differences(saved: dict, now: dict) -> list[str]:
    """The settings that differ, as --set names them, with both values: `optimizer.lr
    was 0.05, now 0.01`."""
    return [f"{_setting(path)} was {_short(a)}, now {_short(b)}"
            for path, a, b in _differences(saved, now, ())]


def _differences(saved: Any, now: Any, path: tuple[str, ...]) -> list[tuple]:
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for key in sorted({*saved, *now}, key=str) for d in _differences(
            saved.get(key, "(none)"), now.get(key, "(none)"), (*path, str(key)))]
    return [] if saved == now else [(path, saved, now)]


NAMED = {("train",): "the number of training samples", ("data",): "the data",
         ("network",): "the network", ("classes",): "the class names"}


def _setting(path: tuple[str, ...]) -> str:
    if path in NAMED:
        return NAMED[path]
    if path[0] == "params":
        return f"the network's `{'.'.join(path[1:])}`"
    words = [w for w in path[1:] if w != "args"]
    if len(words) > 1 and words[-1] == "name":
        words.pop()
    return f"`{'.'.join(words)}`"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_progress(progress: dict, progress_type, steps: int) -> None:
    """The counters in range and consistent with each other and with `steps` per epoch."""
    names = {f.name for f in fields(progress_type)}
    if set(progress) != names:
        odd = sorted(set(progress) ^ names)
        raise NotAStateError(f"the progress's fields differ ({', '.join(odd[:4])})")
    for name in COUNTERS:
        value = progress[name]
        if not isinstance(value, int) or isinstance(value, bool):
            raise NotAStateError(f"the progress's `{name}` is not a whole number")
    for name in AMOUNTS:
        value = progress[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or value < 0 and name != "loss_sum":
            raise NotAStateError(f"the progress's `{name}` is not a finite number of 0 or more")
    epoch, step, best_epoch = progress["epoch"], progress["step"], progress["best_epoch"]
    history, best = progress["history"], progress["best"]
    _in_range("epoch", epoch, 0, MOST_EPOCHS)
    _in_range("step", step, 0, steps - 1)
    if not isinstance(history, list) or len(history) != epoch:
        raise NotAStateError(f"the history does not hold one record for each of the {epoch} "
                        "epochs done")
    for i, record in enumerate(history):
        if not isinstance(record, dict) or record.get("epoch") != i + 1:
            raise NotAStateError(f"the history's record {i + 1} is not epoch {i + 1}'s")
    if epoch == 0:
        if best is not None or best_epoch != -1:
            raise NotAStateError("a best epoch before any epoch is done")
    else:
        _in_range("best_epoch", best_epoch, 1, epoch)
        if isinstance(best, bool) or not isinstance(best, (int, float)) or \
                not math.isfinite(best):
            raise NotAStateError("the best value is not a finite number")
    _in_range("bad_epochs", progress["bad_epochs"], 0, epoch)
    _in_range("correct", progress["correct"], 0, progress["seen"])
    for name in ("seen", "samples"):
        _in_range(name, progress[name], 0, 2**62)


def _in_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise NotAStateError(f"the progress's `{name}` is {value}, outside {low}..{high}")


def check_model(saved: Any, module_state: dict[str, torch.Tensor], what: str = "model") -> None:
    _tensor_dict(saved, what)
    missing = [k for k in module_state if k not in saved]
    extra = [k for k in saved if k not in module_state]
    if missing or extra:
        why = (f"no `{missing[0]}`" if missing else f"`{extra[0]}` is not in the network")
        raise NotAStateError(f"the {what}'s weights do not fit the network ({why})")
    for name, tensor in module_state.items():
        found = saved[name]
        if found.shape != tensor.shape or found.dtype != tensor.dtype:
            raise NotAStateError(f"the {what}'s `{name}` is {_shape(found)} {found.dtype}, "
                                 f"the network's {_shape(tensor)} {tensor.dtype}")


def _tensor_dict(value: Any, what: str) -> None:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        raise NotAStateError(f"`{what}` is not a dict of named tensors")


def _shape(tensor: torch.Tensor) -> str:
    return " x ".join(str(n) for n in tensor.shape) or "a scalar"


def check_optimizer(saved: Any, optimizer: torch.optim.Optimizer) -> None:
    """As many groups, as many parameters in each, the same hyper-parameters, and every
    per-parameter tensor (momentum, Adam's moments) the shape of its parameter."""
    fresh = optimizer.state_dict()
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"}:
        raise NotAStateError("`optimizer` is not an optimizer's state")
    groups, state = saved["param_groups"], saved["state"]
    if not isinstance(groups, list) or len(groups) != len(fresh["param_groups"]):
        raise NotAStateError(f"the optimizer has {len(fresh['param_groups'])} parameter "
                        "group(s) here, another count in the file")
    shapes: dict[Any, torch.Size] = {}
    for i, (group, now, params) in enumerate(zip(groups, fresh["param_groups"],
                                                 optimizer.param_groups)):
        if not isinstance(group, dict) or set(group) != set(now):
            raise NotAStateError(f"the optimizer's group {i + 1} has other settings")
        ids = group["params"]
        if not isinstance(ids, list) or len(ids) != len(now["params"]) or not all(
                isinstance(p, int) and not isinstance(p, bool) for p in ids):
            raise NotAStateError(f"the optimizer's group {i + 1} has {len(now['params'])} "
                            "parameters here, another count in the file")
        for key, value in now.items():
            if key != "params" and type(group[key]) is not type(value):
                raise NotAStateError(f"the optimizer's `{key}` is a "
                                f"{type(group[key]).__name__}, not a {type(value).__name__}")
        shapes.update({p: param.shape for p, param in zip(ids, params["params"])})
    if not isinstance(state, dict):
        raise NotAStateError("the optimizer's per-parameter state is not a dict")
    for key, entry in state.items():
        if key not in shapes or not isinstance(entry, dict):
            raise NotAStateError(f"the optimizer holds state for parameter {key!r}, which none "
                            "of its groups lists")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and \
                    value.shape != shapes[key]:
                raise NotAStateError(f"the optimizer's `{name}` for a "
                                f"{' x '.join(map(str, shapes[key]))} parameter is "
                                f"{_shape(value)}")
            if not isinstance(value, (torch.Tensor, int, float)):
                raise NotAStateError(f"the optimizer's `{name}` is a {type(value).__name__}")


def check_schedule(saved: Any, schedule, done_steps: int) -> None:
    fresh = schedule.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(fresh):
        raise NotAStateError("`schedule` is not this run's schedule's state")
    for key, value in fresh.items():
        if type(saved[key]) is not type(value) or isinstance(value, list) and \
                len(saved[key]) != len(value):
            raise NotAStateError(f"the schedule's `{key}` does not fit")
    if saved["last_epoch"] != done_steps:
        raise NotAStateError(f"the schedule is at step {saved['last_epoch']}, the progress at "
                        f"step {done_steps}")


def check_scaler(saved: Any, scaler) -> None:
    fresh = scaler.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(fresh) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in saved.values()):
        raise NotAStateError("`scaler` is not this run's gradient scaler's state")


def check_rng(saved: Any) -> None:
    now = torch.get_rng_state()
    if not isinstance(saved, torch.Tensor) or saved.dtype != now.dtype or \
            saved.shape != now.shape:
        raise NotAStateError(f"`rng` is not a random generator's state ({now.numel()} bytes)")
