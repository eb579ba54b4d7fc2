"""`--resume` checks `state.pt` field by field before using any of it (issue 29, item 4):
files that load under weights_only but have the wrong structure were KeyError, IndexError,
TypeError, size mismatches, or (a negative epoch) a run that trained and reported "best
epoch -4". Each is one error, "not a cnndsl training state: ...", naming what is wrong;
a state saved by another setup names the setting that differs. Nothing is written."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_run_folders import SPEC, hashes, write_data

from cnndsl.cli import main


class Payload:
    """Any class: weights_only refuses to build it."""


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("state_spec")
    write_data(folder / "data.npz")  # 32 training samples, batch 16: 2 steps an epoch
    (folder / "tiny.cnn").write_text(SPEC)
    return folder / "tiny.cnn"


@pytest.fixture(scope="module")
def saved(spec, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("state_run") / "run"
    assert main(["train", str(spec), "--out", str(out)]) == 0
    return out


def _progress(change):
    def edit(state):
        progress = json.loads(state["progress"])
        change(progress)
        state["progress"] = json.dumps(progress)
        return state
    return edit


def _set(path, value):
    def edit(state):
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return state
    return edit


def _drop(key):
    def edit(state):
        del state[key]
        return state
    return edit


CASES = {
    "a list": (lambda state: list(state), "it holds a list, not a dict"),
    "no progress (KeyError)": (_drop("progress"), "no `progress`"),
    "fingerprint a number (TypeError)": (_set(["fingerprint"], 7),
                                         "`fingerprint` is a int, not JSON text"),
    "progress a field short (TypeError)": (_progress(lambda p: p.pop("best")),
                                           "the progress's fields differ (best)"),
    "progress epoch a word": (_progress(lambda p: p.update(epoch="1")),
                              "the progress's `epoch` is not a whole number"),
    "negative epoch (best epoch -4)": (_progress(lambda p: p.update(epoch=-5)),
                                       "the progress's `epoch` is -5, outside 0..1000000"),
    "step past the epoch (IndexError)": (_progress(lambda p: p.update(step=99)),
                                         "the progress's `step` is 99, outside 0..1"),
    "best epoch past the epochs (IndexError)": (
        _progress(lambda p: p.update(best_epoch=7)),
        "the progress's `best_epoch` is 7, outside 1..1"),
    "history short": (_progress(lambda p: p.update(history=[])),
                      "the history does not hold one record for each of the 1 epochs done"),
    "weights of another shape (size mismatch)": (
        _set(["model", "conv1.weight"], torch.zeros(5, 1, 3, 3)),
        "the model's `conv1.weight` is 5 x 1 x 3 x 3 torch.float32, the network's "
        "4 x 1 x 3 x 3 torch.float32"),
    "weights missing": (lambda state: (state["model"].pop("linear1.bias"), state)[1],
                        "the model's weights do not fit the network (no `linear1.bias`)"),
    "optimizer groups (ValueError)": (
        lambda state: (state["optimizer"]["param_groups"].append(
            copy.deepcopy(state["optimizer"]["param_groups"][0])), state)[1],
        "the optimizer has 1 parameter group(s) here, another count in the file"),
    "optimizer moment of another shape (size mismatch at the step)": (
        _set(["optimizer", "state", 0, "exp_avg"], torch.zeros(3)),
        "the optimizer's `exp_avg` for a 4 x 1 x 3 x 3 parameter is 3"),
    "optimizer state of no parameter": (
        _set(["optimizer", "state", 42], {"step": torch.tensor(1.0)}),
        "the optimizer holds state for parameter 42, which none of its groups lists"),
    "schedule ahead of the progress": (_set(["schedule", "last_epoch"], 5),
                                       "the schedule is at step 5, the progress at step 2"),
    "random state of another size (RuntimeError)": (
        _set(["rng"], torch.zeros(10, dtype=torch.uint8)),
        "`rng` is not a random generator's state (5056 bytes)"),
    "an unknown field": (_set(["extra"], 1), "unknown field `extra`"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_state_is_one_error_naming_what_is_wrong(case, spec, saved, tmp_path,
                                                            capsys):
    edit, what = CASES[case]
    run = tmp_path / "run"
    shutil.copytree(saved, run)
    state = edit(torch.load(run / "state.pt", weights_only=True))
    torch.save(state, run / "state.pt")
    before = hashes(run)
    assert main(["train", str(spec), "--resume", str(run), "--epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert f"error[E-train]: {run}/state.pt is not a cnndsl training state: {what}\n" in err
    assert "Traceback" not in err and "internal error" not in err and "epoch 2/3" not in err
    assert hashes(run) == before


def test_a_state_that_holds_objects_is_refused_unread_without_torchs_advice(
        spec, saved, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(saved, run)
    state = torch.load(run / "state.pt", weights_only=True)
    state["progress"] = Payload()
    torch.save(state, run / "state.pt")
    assert main(["train", str(spec), "--resume", str(run), "--epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert (f"{run}/state.pt is not a cnndsl training state: it holds Python objects other "
            "than tensors and plain values, and is refused unread (loading them could run "
            "code)") in err
    assert "weights_only" not in err and "Weights only" not in err


def test_weights_that_hold_objects_are_refused_without_torchs_advice(spec, tmp_path, capsys):
    path = tmp_path / "w.pt"
    torch.save({"conv1.weight": Payload()}, path)
    assert main(["eval", str(spec), "--weights", str(path)]) == 1
    err = capsys.readouterr().err
    assert "refused unread (loading them could run code)" in err
    assert "weights_only" not in err and "Weights only" not in err


@pytest.mark.parametrize("option, value, setting", [
    ("--lr", "0.01", "`optimizer.lr` was 0.001, now 0.01"),
    ("--seed", "3", "`seed` was 0, now 3"),
    ("--batch", "8", "`batch` was 16, now 8"),
])
def test_a_resume_with_another_setting_names_it(option, value, setting, spec, saved, capsys):
    before = hashes(saved)
    assert main(["train", str(spec), "--resume", str(saved), "--epochs", "3", option,
                 value]) == 1
    err = capsys.readouterr().err
    assert f"error[E-train]: {saved} was trained with another setup: {setting}\n" in err
    assert hashes(saved) == before


def test_a_renamed_spec_with_a_line_added_names_only_the_changed_setting(spec, saved, capsys):
    moved = spec.with_name("renamed.cnn")  # beside data.npz; its loss: a line lower
    moved.write_text("# a comment\n" + spec.read_text())
    assert main(["train", str(moved), "--resume", str(saved), "--epochs", "3",
                 "--lr", "0.01"]) == 1
    err = capsys.readouterr().err
    assert "another setup: `optimizer.lr` was 0.001, now 0.01\n" in err, err
