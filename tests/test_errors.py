"""Broken specs: exit 1, the right file:line:col, a caret, no traceback; golden renders."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, golden, run_cli

BROKEN = ROOT / "tests" / "broken"
GOLDEN = ROOT / "tests" / "golden" / "errors"

# file -> (code, line, column) of its first error
EXPECTED = {
    "unclosed_paren.cnn": ("E-syntax", 4, 5),
    "bad_arrow.cnn": ("E-syntax", 3, 16),
    "stray_character.cnn": ("E-syntax", 4, 17),
    "truncated.cnn": ("E-syntax", 4, 14),
    "unknown_layer.cnn": ("E-name", 3, 5),
    "unknown_tensor.cnn": ("E-name", 4, 9),
    "misspelt_argument.cnn": ("E-arg", 3, 17),
    "bad_probability.cnn": ("E-arg", 4, 24),
    "float_channels.cnn": ("E-arg", 3, 10),
    "unknown_padding.cnn": ("E-arg", 3, 25),
    "too_many_arguments.cnn": ("E-arg", 3, 17),  # conv takes 2 positionals
    "missing_kernel.cnn": ("E-arg", 3, 5),
    "zero_channels.cnn": ("E-arg", 3, 10),
    "pool_padding.cnn": ("E-arg", 3, 16),
    "kernel_too_large.cnn": ("E-shape", 9, 14),
    "group_mismatch.cnn": ("E-groups", 4, 17),
    "linear_before_flatten.cnn": ("E-shape", 4, 5),
    "missing_input.cnn": ("E-input", 2, 5),
    "empty_network.cnn": ("E-input", 1, 9),
    "unknown_type.cnn": ("E-type", 1, 11),
    "two_errors.cnn": ("E-shape", 4, 13),
    "residual_identity_changes_shape.cnn": ("E-residual", 3, 5),
    "concat_sizes.cnn": ("E-shape", 3, 5),
    "add_channels_after_rounding.cnn": ("E-shape", 3, 5),
    "unknown_block.cnn": ("E-name", 3, 5),
    "block_too_many_arguments.cnn": ("E-arg", 3, 18),
    "block_argument_type.cnn": ("E-arg", 3, 22),
    "recursive_block.cnn": ("E-recursion", 3, 5),
    "undefined_output.cnn": ("E-name", 4, 15),
    "duplicate_tensor.cnn": ("E-name", 4, 5),
    "missing_import.cnn": ("E-import", 1, 1),
    "deep_in_the_stdlib.cnn": ("E-shape", 6, 31),  # at the call, not in <stdlib>
}

# errors located in another file than the one checked
ELSEWHERE = {"import_cycle.cnn": ("E-import", "tests/broken/imports/cycle_b.cnn", 1, 1)}


@pytest.mark.parametrize("name", sorted(ELSEWHERE))
def test_error_in_an_imported_file_points_there(name):
    code, file, line, column = ELSEWHERE[name]
    result = run_cli("check", f"tests/broken/{name}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error[{code}]")
    assert f"--> {file}:{line}:{column}\n" in result.stderr
    golden(GOLDEN / name.replace(".cnn", ".txt"), result.stderr)


def test_every_broken_spec_is_listed():
    assert sorted(p.name for p in BROKEN.glob("*.cnn")) == sorted({**EXPECTED, **ELSEWHERE})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_spec_gives_a_located_error(name):
    code, line, column = EXPECTED[name]
    result = run_cli("check", f"tests/broken/{name}")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    stderr = result.stderr
    errors = [block for block in stderr.split("\n\n") if block.startswith("error[")]
    first = errors[0]
    assert first.startswith(f"error[{code}]: ")
    assert f"--> tests/broken/{name}:{line}:{column}\n" in first
    source_line = (BROKEN / name).read_text().splitlines()[line - 1]
    lines = first.splitlines()
    quoted = [i for i, text in enumerate(lines) if text.lstrip() == f"{line} | {source_line}"][0]
    caret_line = lines[quoted + 1]
    assert caret_line.index("^") - caret_line.index("|") - 2 == column - 1  # under the column
    golden(GOLDEN / name.replace(".cnn", ".txt"), stderr)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_spec_in_json(name):
    code, line, column = EXPECTED[name]
    result = run_cli("check", "--json", f"tests/broken/{name}")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    first = report["errors"][0]
    assert (first["code"], first["line"], first["column"]) == (code, line, column)
    assert first["file"] == f"tests/broken/{name}"


def test_all_errors_of_a_run_are_reported_in_order():
    result = run_cli("check", "tests/broken/two_errors.cnn")
    assert result.stderr.count("error[") == 2
    assert result.stderr.index("two_errors.cnn:4:13") < result.stderr.index("two_errors.cnn:6:21")
    assert result.stderr.rstrip().endswith("2 errors")


def test_follow_on_errors_are_suppressed():
    # linear after a failed conv would also "fail" (unflattened): only the real error shows
    result = run_cli("check", "tests/broken/kernel_too_large.cnn")
    assert result.stderr.count("error[") == 1
