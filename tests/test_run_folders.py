"""Training never loses a run (issue 29): a new folder for each run, another run's folder
refused, a lock for the run's life, the folder checked before the first batch, SIGTERM as
Ctrl-C, write failures as E-io, metrics.json always JSON, a finished run resumed writes
nothing, torchrun's errors printed once. Every refusal leaves every earlier file as it was
(each test hashes the folder before and after)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cnndsl.cli import main, resume_command
from cnndsl.training.loop import json_safe

SPEC = """network tiny(classes: int = 2) {
    input image: 1 x 8 x 8
    conv(4, 3, padding=same) -> relu -> maxpool(2)
    flatten -> linear(classes)
}
train tiny() {
    data: "data.npz"
    epochs: 1
    batch: 16
}
"""
RUN_FILES = ("best.safetensors", "last.safetensors", "metrics.json", "curves.png",
             "confusion.png", "state.pt", "model.json")


def write_data(path: Path, n: int = 40, fill: float | None = None) -> Path:
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 8, 8), dtype=np.float32)
    if fill is not None:
        x[:] = fill
    np.savez(path, x=x, y=np.arange(n) % 2)
    return path


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("spec")
    write_data(folder / "data.npz")
    (folder / "tiny.cnn").write_text(SPEC)
    return folder / "tiny.cnn"


def train(*args, capsys=None) -> tuple[int, str, str]:
    code = main(["train", *map(str, args)])
    if capsys is None:
        return code, "", ""
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def finished(spec, tmp_path_factory) -> Path:
    """One finished run (1 epoch); tests copy it before touching it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train(spec, "--out", out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def hashes(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too), by content; links by their target."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(folder))] = "-> " + os.readlink(path)
        elif path.is_file():
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[str(path.relative_to(folder))] = "folder"
    return found


def test_each_run_without_out_gets_a_new_folder(spec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, _ = train(spec, capsys=capsys)
    assert code == 0 and "wrote runs/train/best.safetensors" in out
    first = hashes(tmp_path / "runs" / "train")
    code, out, _ = train(spec, capsys=capsys)
    assert code == 0 and "wrote runs/train2/best.safetensors" in out
    assert hashes(tmp_path / "runs" / "train") == first  # the first run is untouched
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["train", "train2"]


def test_an_out_holding_another_run_is_refused_unless_exist_ok(spec, run_copy, capsys):
    before = hashes(run_copy)
    code, _, err = train(spec, "--out", run_copy, capsys=capsys)
    assert code == 1
    assert (f"error[E-io]: {run_copy} holds another run (best.safetensors, last.safetensors, "
            "metrics.json, curves.png, confusion.png, state.pt, model.json); not replaced") in err
    assert "--exist-ok" in err and "epoch 1/1" not in err
    assert hashes(run_copy) == before
    code, out, _ = train(spec, "--out", run_copy, "--exist-ok", capsys=capsys)
    assert code == 0 and f"wrote {run_copy}/best.safetensors" in out
    assert not (run_copy / ".cnndsl.lock").exists()  # the lock goes with the run


def test_a_finished_run_resumed_says_so_and_writes_nothing(spec, run_copy, capsys):
    before = hashes(run_copy)
    code, out, err = train(spec, "--resume", run_copy, capsys=capsys)
    assert code == 0, err
    assert f"{run_copy} is complete, nothing written" in out and "wrote" not in out
    assert f"{run_copy} is complete (1 epoch(s) trained of 1)" in err
    assert "resuming" not in err
    assert hashes(run_copy) == before
    code, out, _ = train(spec, "--resume", run_copy, "--json", capsys=capsys)
    summary = json.loads(out)
    assert summary["complete"] is True and summary["written"] == []
    assert hashes(run_copy) == before


def test_resume_writes_into_the_folder_it_resumes(spec, run_copy, tmp_path, monkeypatch,
                                                 capsys):
    monkeypatch.chdir(tmp_path)
    code, out, _ = train(spec, "--resume", run_copy, "--epochs", "2", capsys=capsys)
    assert code == 0 and f"wrote {run_copy}/" in out
    assert [r["epoch"] for r in json.loads((run_copy / "metrics.json").read_text())] == [1, 2]
    assert not (tmp_path / "runs").exists()


def test_a_folder_another_run_holds_is_refused_and_a_stale_lock_is_not(spec, run_copy,
                                                                       capsys):
    lock = run_copy / ".cnndsl.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242 otherhost\n")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live run holds it
    try:
        before = hashes(run_copy)
        code, _, err = train(spec, "--resume", run_copy, "--epochs", "2", capsys=capsys)
        assert code == 1
        assert (f"error[E-io]: {run_copy} is in use by another training run (process 4242 "
                "on otherhost)") in err
        assert hashes(run_copy) == before
    finally:
        os.close(fd)  # the holder ends: its lock file stays behind, locked by nobody
    code, out, err = train(spec, "--resume", run_copy, "--epochs", "2", capsys=capsys)
    assert code == 0, err
    assert not lock.exists()


def _read_only(folder: Path) -> None:
    folder.chmod(0o555)


def _state_a_folder(folder: Path) -> None:
    (folder / "state.pt").mkdir()


def _metrics_a_link(folder: Path) -> None:
    (folder / "elsewhere.json").write_text("[]")
    (folder / "metrics.json").symlink_to(folder / "elsewhere.json")


def _best_read_only(folder: Path) -> None:
    (folder / "best.safetensors").write_bytes(b"")
    (folder / "best.safetensors").chmod(0o444)


@pytest.mark.parametrize("make, message", [
    (_read_only, "cannot write to {out}: read-only"),
    (_state_a_folder, "cannot write {out}/state.pt: a folder; outputs go to regular files"),
    (_metrics_a_link, "cannot write {out}/metrics.json: a symbolic link"),
    (_best_read_only, "cannot write {out}/best.safetensors: read-only; not replaced"),
], ids=["read-only folder", "state.pt a folder", "metrics.json a link",
        "read-only best"])
def test_an_unwritable_folder_is_refused_before_the_first_batch(spec, tmp_path, make,
                                                                message, capsys):
    out = tmp_path / "run"
    out.mkdir()
    make(out)
    before = hashes(out)
    try:
        code, _, err = train(spec, "--out", out, "--exist-ok", capsys=capsys)
    finally:
        out.chmod(0o755)
    assert code == 1
    assert "error[E-io]: " + message.format(out=out) in err
    assert "epoch 1/1" not in err  # before the first batch
    assert hashes(out) == before


def test_an_out_that_is_a_file_is_refused(spec, tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("notes")
    code, _, err = train(spec, "--out", out, capsys=capsys)
    assert code == 1 and f"error[E-io]: --out {out}: not a folder" in err
    assert out.read_text() == "notes"


def test_a_full_disk_is_e_io_naming_the_file_and_keeps_the_earlier_files(
        spec, run_copy, monkeypatch, capsys):
    """The epoch's files are written together: `best` went to its temporary file, `last`
    found the disk full, and neither replaced the files of the epoch before."""
    from cnndsl import atomic
    real = atomic.write_file

    def write_file(path, data):
        if Path(path).name.startswith(".last.safetensors."):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)
    monkeypatch.setattr(atomic, "write_file", write_file)
    before = hashes(run_copy)
    code, _, err = train(spec, "--resume", run_copy, "--epochs", "2", capsys=capsys)
    assert code == 1
    assert (f"error[E-io]: cannot write {run_copy}/last.safetensors: No space left on "
            "device; training stopped") in err
    assert "Traceback" not in err and "internal error" not in err
    assert hashes(run_copy) == before


def test_a_safetensors_failure_is_e_io_naming_the_file(spec, tmp_path, monkeypatch, capsys):
    import safetensors.torch
    from safetensors import SafetensorError

    def save(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                              "StorageFull })")
    monkeypatch.setattr(safetensors.torch, "save", save)
    code, _, err = train(spec, "--out", tmp_path / "run", capsys=capsys)
    assert code == 1
    assert f"error[E-io]: cannot write {tmp_path}/run/best.safetensors: Error while " \
           "serializing" in err
    assert not (tmp_path / "run").exists()  # made for the run, and left empty: removed


def test_metrics_are_json_any_reader_takes():
    history = [{"epoch": 1, "val_loss": math.nan, "f1": [math.inf, -math.inf, 0.5]}]
    text = json.dumps(json_safe(history), allow_nan=False)
    assert json.loads(text) == [{"epoch": 1, "val_loss": None, "f1": [None, None, 0.5]}]


def test_the_metrics_of_a_run_are_strict_json(finished):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    records = json.loads((finished / "metrics.json").read_text(), parse_constant=refuse)
    assert [r["epoch"] for r in records] == [1]


def test_the_resume_command_is_the_command_given_with_resume():
    words = ["train", "my spec.cnn", "--out", "runs/a", "--exist-ok", "--set",
             "optimizer.lr=0.1", "--data", "d.npz", "--out=x", "--resume", "old"]
    assert resume_command(words, Path("runs/a")) == (
        "cnndsl train 'my spec.cnn' --set optimizer.lr=0.1 --data d.npz --resume runs/a")


def test_sigterm_saves_the_state_as_ctrl_c_does_and_the_command_it_suggests_resumes(
        spec, tmp_path, monkeypatch, capsys):
    """What docker, SLURM and torchrun send: the step ends, the state is saved, and the
    command printed continues the run."""
    long = tmp_path / "long.cnn"
    long.write_text(SPEC.replace("epochs: 1", "epochs: 500").replace(
        '"data.npz"', f'"{spec.parent / "data.npz"}"'))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "train"

    def terminate_after_an_epoch():
        deadline = time.monotonic() + 120
        while not (out / "metrics.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread, by the loop
    killer = threading.Thread(target=terminate_after_an_epoch)
    killer.start()
    code, _, err = train(long, capsys=capsys)
    killer.join()
    assert code == 128 + signal.SIGTERM, err
    assert "SIGTERM: stopping after this step" in err and "Traceback" not in err
    line = next(x for x in err.splitlines() if "continue with: " in x)
    command = shlex.split(line.split("continue with: ")[1])
    assert command == ["cnndsl", "train", str(long), "--resume", "runs/train"]
    done = len(json.loads((out / "metrics.json").read_text()))
    code, _, err = train(*command[2:], "--epochs", done + 1, capsys=capsys)
    assert code == 0, err
    assert "resuming runs/train at epoch" in err
    assert len(json.loads((out / "metrics.json").read_text())) == done + 1


def test_a_diverging_first_epoch_says_nothing_was_saved(spec, tmp_path, capsys):
    code, _, err = train(spec, "--out", tmp_path / "run", "--lr", "1e30", capsys=capsys)
    assert code == 1
    assert "error[E-train]: the loss became nan at epoch 1, step 2; training stopped" in err
    assert "lower the learning rate" in err
    assert "no epoch finished, so nothing was saved" in err and "last good" not in err


def test_a_loss_that_is_not_finite_at_the_first_step_is_not_blamed_on_the_rate(
        spec, tmp_path, capsys):
    data = write_data(tmp_path / "huge.npz", fill=3e38)
    code, _, err = train(spec, "--data", data, "--out", tmp_path / "run", capsys=capsys)
    assert code == 1
    assert "at epoch 1, step 1 (the first step: no update has been made yet)" in err
    assert "learning rate" not in err
    assert "no epoch finished, so nothing was saved" in err


TORCHRUN = Path(sys.executable).parent / "torchrun"


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(TORCHRUN), "--nproc_per_node=2", "--standalone",
                           "-m", "cnndsl", "train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_under_torchrun_a_refusal_is_printed_once_and_every_process_stops(
        spec, run_copy, tmp_path):
    """Rank 0 alone claims the folder: the others learn of its refusal and stop, quietly,
    instead of waiting for it in the first batch."""
    before = hashes(run_copy)
    result = torchrun(str(spec), "--out", str(run_copy), cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("error[E-io]") == 1, result.stderr
    assert f"{run_copy} holds another run" in result.stderr
    assert "Traceback" not in result.stderr.split("error[E-io]")[0]
    assert "internal error" not in result.stderr
    assert hashes(run_copy) == before


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_under_torchrun_fewer_training_samples_than_processes_is_one_located_error(
        tmp_path):
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    # 1 train, 2 val samples (of class a: labels [0, 1, 1] would leave class 0 without a
    # training sample, refused before the processes are counted)
    np.savez(tmp_path / "data.npz", x=x, y=np.array([0, 0, 0]), classes=np.array(["a", "b"]))
    (tmp_path / "tiny.cnn").write_text(SPEC.replace("batch: 16", "batch: 16\n    "
                                                    "val_split: 0.9"))
    result = torchrun("tiny.cnn", "--out", "run", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("error[E-train]") == 1, result.stderr
    assert ("error[E-train]: 1 training sample(s) cannot be split across 2 processes"
            in result.stderr)
    assert "tiny.cnn:7:" in result.stderr  # at `data:`
    assert "internal error" not in result.stderr


def test_a_refused_run_writes_not_even_what_predict_needs(spec, run_copy, capsys):
    """model.json (what `predict` needs beside the weights) is written with the checkpoints,
    after the folder is claimed: a refused run leaves another run's copy as it was."""
    (run_copy / "model.json").write_text('{"format": "cnndsl.model", "mark": 1}\n')
    before = hashes(run_copy)
    code, _, err = train(spec, "--out", run_copy, capsys=capsys)
    assert code == 1 and "--exist-ok" in err
    assert hashes(run_copy) == before


FAULT = """import os, sys
from cnndsl.cli import main
from cnndsl.diagnostics import CnnError, Diagnostic
from cnndsl.training import loop

original = loop.Trainer._train_epoch


def fault(self, *args, **kwargs):  # a fault in the ranks named, at the first batch
    if os.environ["RANK"] in sys.argv[1].split(","):
        if sys.argv[2] == "user":
            raise CnnError([Diagnostic(code="E-data", message="rank-only data fault")])
        raise RuntimeError("rank-only fault")
    return original(self, *args, **kwargs)


loop.Trainer._train_epoch = fault
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
@pytest.mark.parametrize("ranks, kind", [("0,1", "internal"), ("1", "user")])
def test_under_torchrun_any_error_is_printed_once_whichever_rank_has_it(
        spec, tmp_path, ranks, kind):
    """An unexpected exception on every rank, or an error on rank 1 alone (rank 0 waits for
    it in the first batch): one process prints it, the others stop quietly, non-zero."""
    (tmp_path / "fault.py").write_text(FAULT)
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", "--standalone", "fault.py",
                             ranks, kind, "train", str(spec), "--out", "run"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    said = "internal error: RuntimeError: rank-only fault" if kind == "internal" else \
        "error[E-data]: rank-only data fault"
    assert result.stderr.count(said) == 1, result.stderr
    assert result.stderr.count("internal error") == (kind == "internal"), result.stderr
