"""Outputs are written atomically; colour only on a terminal and never with NO_COLOR."""

from __future__ import annotations

import io
import os

import onnx
import pytest

import cnndsl
from cnndsl import atomic
from cnndsl.cli import main
from cnndsl.diagnostics import use_color
from conftest import SPECS


@pytest.mark.parametrize("target", ["torch", "onnx"])
def test_a_failed_compile_keeps_the_good_file(tmp_path, monkeypatch, target):
    out = tmp_path / ("model.py" if target == "torch" else "model.onnx")
    out.write_text("the good old output")

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    assert main(["compile", str(SPECS / "lenet5.cnn"), "--to", target, "-o", str(out)]) == 1
    assert out.read_text() == "the good old output"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind


def test_a_writer_that_dies_halfway_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "model.onnx"
    real_save = onnx.save_model

    def half_then_crash(model, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(model.SerializeToString()[:100])
        raise RuntimeError("killed while writing (simulated)")

    monkeypatch.setattr(onnx, "save_model", half_then_crash)
    with pytest.raises(RuntimeError):
        cnndsl.load(SPECS / "lenet5.cnn").to_onnx(out)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(onnx, "save_model", real_save)
    cnndsl.load(SPECS / "lenet5.cnn").to_onnx(out)
    assert onnx.load(str(out)).graph.name == "lenet5"


def test_outputs_get_ordinary_permissions(tmp_path):
    out = tmp_path / "lenet.py"
    assert main(["compile", str(SPECS / "lenet5.cnn"), "--to", "torch", "-o", str(out)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    out.chmod(0o640)
    assert main(["compile", str(SPECS / "lenet5.cnn"), "--to", "torch", "-o", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(_Tty()) is True
    assert use_color(io.StringIO()) is False
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_color(_Tty()) is False


def test_coloured_rendering_has_the_same_text():
    try:
        cnndsl.loads("network n() {\n    input x: 3 x 4 x 4\n    conv(8, 5)\n}\n")
    except cnndsl.CnnError as exc:
        plain, coloured = exc.render(color=False), exc.render(color=True)
    assert "\033[" in coloured and "\033[" not in plain
    import re
    assert re.sub(r"\033\[[0-9;]*m", "", coloured) == plain
