"""Issue 10: files from someone you do not trust — imports, outputs, paths, bounded cost.
Each case answers with a located error or works; nothing blocks, nothing is replaced that
should not be, no file's text is quoted unless it parsed as .cnn."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli

NET = "network n() {\n    input image: 3 x 8 x 8\n    conv(4, 3)\n}\n"


def check_import(tmp_path, target: str, *flags):
    (tmp_path / "main.cnn").write_text(f'import "{target}"\n' + NET)
    return subprocess.run([sys.executable, "-m", "cnndsl", "check", "main.cnn", *flags],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)})


@pytest.fixture
def files(tmp_path):
    os.mkfifo(tmp_path / "fifo.cnn")
    (tmp_path / "loopa.cnn").symlink_to(tmp_path / "loopb.cnn")
    (tmp_path / "loopb.cnn").symlink_to(tmp_path / "loopa.cnn")
    (tmp_path / "secret.txt").write_text("root:SECRET-HASH:19000:0:99999:7:::\n")
    (tmp_path / "secret.cnn").symlink_to(tmp_path / "secret.txt")
    (tmp_path / "big.cnn").write_text(" " * (4 * 2**20 + 10))
    (tmp_path / "zero.cnn").symlink_to("/dev/zero")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "lib.cnn").write_text("block b() {\n    relu\n}\n")
    return tmp_path


@pytest.mark.parametrize("target, message", [
    ("/etc/shadow", "imports read .cnn files only"),
    ("/proc/self/environ", "imports read .cnn files only"),
    ("secret.txt", "imports read .cnn files only"),
    ("fifo.cnn", "not a regular file"),
    ("zero.cnn", "not a regular file"),
    ("loopa.cnn", "ymlink loop"),
    ("big.cnn", "larger than 4 MiB"),
    ("secret.cnn", "`secret.cnn` does not parse as .cnn (line 1, column 1)"),
    ("nul\\0.cnn", None),
])
def test_hostile_imports_are_refused_at_the_import_line(files, target, message):
    result = check_import(files, target)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error[E-")
    assert " --> main.cnn:1:1" in result.stderr and "Traceback" not in result.stderr
    if message:
        assert message in result.stderr
    assert "SECRET" not in result.stderr  # never quoted


def test_imports_can_be_confined_to_the_specs_folder(files):
    assert check_import(files, "sub/lib.cnn", "--confine-imports").returncode == 0
    outside = files / "sub" / "main.cnn"
    outside.write_text('import "../secret.cnn"\n' + NET)
    result = run_cli("check", str(outside), "--confine-imports")
    assert result.returncode == 1 and "lies outside" in result.stderr


def test_a_fifo_or_a_device_as_the_spec_is_refused_at_once(files):
    for spec in (str(files / "fifo.cnn"), "/dev/zero"):
        result = run_cli("check", spec)
        assert result.returncode == 1 and "not a regular file" in result.stderr


@pytest.mark.parametrize("kind", ["device", "fifo", "folder", "read-only"])
def test_outputs_go_to_regular_files_only(kind, tmp_path):
    target = {"device": "/dev/null", "fifo": str(tmp_path / "f"), "folder": str(tmp_path),
              "read-only": str(tmp_path / "ro.onnx")}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    if kind == "read-only":
        (tmp_path / "ro.onnx").write_bytes(b"keep me")
        os.chmod(target, 0o444)
    before = os.stat(target)
    result = run_cli("compile", "specs/lenet5.cnn", "--to", "onnx", "-o", target)
    assert result.returncode == 1 and f"error[E-io]: cannot access {target}" in result.stderr
    after = os.stat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    if kind == "read-only":
        assert (tmp_path / "ro.onnx").read_bytes() == b"keep me"


def test_a_path_that_is_not_utf8_works_everywhere(tmp_path):
    spec = os.fsencode(tmp_path) + b"/m\xff.cnn"
    with open(spec, "wb") as f:
        f.write((ROOT / "specs" / "lenet5.cnn").read_bytes())
    env = {**os.environ, "NO_COLOR": "1"}
    for argv in (["check"], ["compile", "--to", "torch", "-o", b"o\xff.py"],
                 ["compile", "--to", "onnx", "-o", b"o\xff.onnx"], ["run"], ["summary"]):
        command = [sys.executable, "-m", "cnndsl", argv[0], spec, *argv[1:]]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, env=env,
                                timeout=120)
        assert result.returncode == 0, (argv, result.stderr)


@pytest.mark.parametrize("expression, code", [
    ("round(123, -(10 ** 8))", "E-value"), ("9" * 4301, "E-limit"),
    ("round(5, 2.5)", "E-value"), ("10 ** 10 ** 9", "E-value"),
])
def test_arithmetic_has_bounded_cost(expression, code):
    script = ("import cnndsl\ntry:\n    cnndsl.loads('network n() {\\n input image: 3 x 8 x 8"
              f"\\n conv({expression}, 3)\\n}}')\nexcept cnndsl.CnnError as e:\n"
              "    d = e.diagnostics[0]\n    print(d.code, d.span.line, d.span.column)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=20)
    assert result.stdout.split() == [code, "3", "7"], result.stderr
