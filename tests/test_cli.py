"""The command line: exit codes, JSON, compile output, --set, and no torch for `check`."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, import_file, run_cli


def test_check_prints_table_and_totals():
    result = run_cli("check", "specs/lenet5.cnn")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "c1" in out and "6 x 28 x 28" in out
    assert "parameters  61,706" in out
    assert "MACs count conv, transposed conv and linear multiply-accumulates only" in out


def test_check_json_has_the_promised_fields():
    result = run_cli("check", "--json", "specs/lenet5.cnn")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["network"] == "lenet5"
    assert report["inputs"] == [{"name": "image", "shape": [1, 32, 32], "line": 5}]
    assert report["params"] == 61_706
    assert report["macs"] == sum(layer["macs"] for layer in report["layers"])
    c1 = report["layers"][0]
    assert c1 == {**c1, "name": "c1", "op": "conv", "line": 6, "output_shape": [6, 28, 28],
                  "params": 156, "macs": 6 * 28 * 28 * 25}


def test_set_overrides_and_reports_derivation():
    result = run_cli("check", "--json", "specs/lenet5.cnn", "--set", "classes=4")
    report = json.loads(result.stdout)
    assert report["layers"][-1]["output_shape"] == [4]
    assert report["layers"][-1]["derivations"] == {"out_features": "classes = 4"}


def test_set_of_unknown_parameter_is_a_spec_error():
    result = run_cli("check", "specs/lenet5.cnn", "--set", "clases=4")
    assert result.returncode == 1
    assert "did you mean `classes`?" in result.stderr


def test_usage_errors_exit_2():
    assert run_cli("check").returncode == 2
    assert run_cli("frobnicate", "specs/lenet5.cnn").returncode == 2
    bad_set = run_cli("check", "specs/lenet5.cnn", "--set", "no-equals")
    assert bad_set.returncode == 2 and "NAME=VALUE" in bad_set.stderr


def test_missing_file_is_exit_1_without_traceback():
    result = run_cli("check", "specs/nope.cnn")
    assert result.returncode == 1
    assert "cannot read specs/nope.cnn" in result.stderr and "Traceback" not in result.stderr


def test_strict_turns_the_stride_warning_into_an_error(tmp_path):
    spec = tmp_path / "s.cnn"
    spec.write_text("network s() {\n    input x: 3 x 7 x 7\n    conv(4, 3, stride=3)\n}\n")
    loose, strict = run_cli("check", str(spec)), run_cli("check", "--strict", str(spec))
    assert loose.returncode == 0 and "warning[W-stride]" in loose.stderr
    assert strict.returncode == 1 and "error[W-stride]" in strict.stderr


def test_compile_to_torch_writes_importable_source(tmp_path):
    out = tmp_path / "lenet.py"
    result = run_cli("compile", "specs/lenet5.cnn", "--to", "torch", "-o", str(out))
    assert result.returncode == 0, result.stderr
    model = import_file(out, "lenet_cli").build()
    assert sum(p.numel() for p in model.parameters()) == 61_706
    assert "import torch" in out.read_text()
    assert "cnndsl" not in out.read_text().split('"""', 2)[2]  # imports only torch


def test_compile_error_leaves_no_file(tmp_path):
    out = tmp_path / "broken.py"
    result = run_cli("compile", "tests/broken/kernel_too_large.cnn", "--to", "torch", "-o",
                     str(out))
    assert result.returncode == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_check_does_not_import_torch():
    code = ("import sys, cnndsl.cli; rc = cnndsl.cli.main(['check', 'specs/vgg16.cnn']); "
            "assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'onnx' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
