"""Whatever file cnndsl is fed: a located error or a correct model, in bounded time.

The short fuzz campaign runs here; `python tools/fuzz.py --cases 50000` runs a long one.
Every crash the fuzzing and probing found is a regression case below.
"""

from __future__ import annotations

import sys
import time
import tracemalloc

import pytest

import cnndsl
from cnndsl import CnnError
from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "tools"))
import fuzz  # noqa: E402

BODY = "network n() {\n    input x: 3 x 16 x 16\n    %s\n}\n"

# text -> (code, line, column) of the first error; each was a crash or a hang once
REGRESSIONS = {
    "divisible_by_zero": (BODY % "conv(divisible(9, 0), 3)", ("E-value", 3, 10)),
    "complex_power": (BODY % "conv((-8) ** 0.5, 3)", ("E-value", 3, 10)),
    "long_expression": (BODY % ("conv(" + "+".join(["1"] * 20000) + ", 1)"),
                        ("E-limit", 3, 10)),
    "deep_parentheses": (BODY % ("conv(" + "(" * 3000 + "1" + ")" * 3000 + ", 1)"),
                         ("E-limit", 3, 73)),
    "deep_residuals": (BODY % ("residual {\n" * 500 + "relu\n" + "}\n" * 500),
                       ("E-limit", 66, 10)),
    "deep_block_calls": ("\n".join(f"block b{i}() {{\n    b{i + 1}\n}}" for i in range(400))
                         + "\nblock b400() {\n    relu\n}\n" + BODY % "b0",
                         ("E-limit", 95, 5)),
    # the repeat whose first copy shows it passes the layer bound, at once (it was the
    # layer that reached the bound, seconds later)
    "nested_huge_repeats": ("block r() {\n    relu * 10000\n}\n" + BODY % "r * 10000",
                            ("E-limit", 6, 9)),
    "labelled_huge_repeat": (BODY % "stage: (conv(3, 1) -> relu) * 2\n    s: r * 10000"
                             .replace("(conv(3, 1) -> relu) * 2", "relu * 2")
                             + "block r() {\n    relu * 100\n}\n", ("E-limit", 4, 12)),
    # found by `tools/fuzz.py` (seed 11, case 403): FCOS's shared head with a 10,000-layer
    # tower took 11 s to reach the layer bound
    "fuzz_11_403_shared_head_tower_10000": (
        (ROOT / "specs" / "fcos_resnet50_fpn.cnn").read_text().replace(
            "conv_gn_relu(c) * 4", "conv_gn_relu(c) * 10000"), ("E-limit", 15, 29)),
    "huge_channels": (BODY % "conv(2000000000, 3)", ("E-limit", 1, 9)),
    "channels_past_32_bits": (BODY % "conv(4000000000, 3)", ("E-arg", 3, 10)),
    "huge_input": ("network n() {\n    input x: 3 x 100000 x 100000\n    conv(8, 3)\n}\n",
                   ("E-limit", 1, 9)),
    "stray_unicode": (BODY % "conv(3, 1) → relu", ("E-syntax", 3, 16)),
    "no_network": ("block a() {\n    relu\n}\n", ("E-input", 1, 1)),
    # found by `tools/fuzz.py --cases 50000 --seed 7`: a 10,000-layer dense block once
    # built a 10,000-deep channel expression and overflowed the stack
    "fuzz_7_49290_dense_block_10000": (
        (ROOT / "specs" / "densenet121.cnn").read_text().replace(
            "dense_block(24, growth)", "dense_block(10000, growth)"), ("E-limit", 4, 9)),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression(name):
    text, (code, line, column) = REGRESSIONS[name]
    start = time.process_time()  # CPU time: the bound is on the work, not on the load
    with pytest.raises(CnnError) as info:
        cnndsl.loads(text, name="case.cnn")
    assert time.process_time() - start < 10
    first = info.value.diagnostics[0]
    assert (first.code, first.span.line, first.span.column) == (code, line, column), first
    info.value.render()


def test_short_fuzz_campaign():
    outcomes, failures, elapsed = fuzz.campaign(count=600, seed=11, time_bound=10)
    assert not failures, failures[:3]
    assert outcomes["checked"] > 50 and outcomes["located error"] > 300  # both paths taken


def test_fuzzed_files_through_the_cli(tmp_path):
    texts = list(fuzz.cases(12, seed=5))
    texts.append(bytes(range(256)).decode("latin-1"))
    for i, text in enumerate(texts):
        path = tmp_path / f"case{i}.cnn"
        path.write_text(text, encoding="latin-1" if i == len(texts) - 1 else "utf-8")
        result = run_cli("check", str(path))
        assert result.returncode in (0, 1), result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        if result.returncode == 1:
            assert f"--> {path}:" in result.stderr or f"{path.name}:" in result.stderr


def test_non_utf8_file_is_located(tmp_path):
    path = tmp_path / "bad.cnn"
    path.write_bytes(b"network n() {\n    input x: 3 x 8 x 8\n    conv(4, 3) \xff\n}\n")
    result = run_cli("check", str(path))
    assert result.returncode == 1
    assert "not UTF-8 text: byte 0xff" in result.stderr and f"{path}:3:16" in result.stderr


def test_memory_limit_refuses_before_allocating_anything():
    text = "network big() {\n    input x: 3 x 224 x 224\n    flatten -> linear(2000000)\n}\n"
    tracemalloc.start()
    with pytest.raises(CnnError) as info:
        cnndsl.loads(text)  # 150,528 x 2,000,000 weights + bias: 1.2 TB
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    (error,) = info.value.diagnostics
    assert error.code == "E-limit" and "the parameters need 1121.53 GiB" in error.message
    assert "301,058,000,000 parameters" in error.notes[0]
    assert peak < 50 * 2**20  # nothing the size of a tensor was allocated


def test_memory_limit_is_a_flag():
    small = ["check", "specs/resnet18.cnn", "--memory-limit", "40MiB"]
    refused = run_cli(*small)
    assert refused.returncode == 1 and "over the limit of 40.00 MiB" in refused.stderr
    assert run_cli("check", "specs/resnet18.cnn", "--memory-limit", "1GiB").returncode == 0
    assert run_cli("check", "specs/resnet18.cnn", "--memory-limit", "lots").returncode == 2


def test_load_and_loads():
    text = (ROOT / "specs" / "lenet5.cnn").read_text()
    assert cnndsl.loads(text).params == cnndsl.load(ROOT / "specs" / "lenet5.cnn").params
    with pytest.raises(CnnError) as info:
        cnndsl.loads("relu")
    assert info.value.diagnostics[0].span.file == "<string>"


LINE_BREAKERS = ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", LINE_BREAKERS, ids=lambda c: f"U+{ord(c):04X}")
def test_characters_python_splits_lines_at_keep_line_numbers(char):
    """Issue 10 #15: Lark counts `\\n` only while str.splitlines() also breaks at these; a
    quoted line must be the line the error is on, in a comment or not."""
    in_comment = (f"network n() {{\n    input image: 3 x 8 x 8  # a{char}b\n    relu\n"
                  "    conv(4, 99)\n}\n")
    with pytest.raises(CnnError) as info:
        cnndsl.loads(in_comment, name="t.cnn")
    d = info.value.diagnostics[0]
    assert (d.code, d.span.line, d.span.column) == ("E-shape", 4, 13)
    assert "4 |     conv(4, 99)\n" in info.value.render()
    outside = (f"network n() {{\n    input image: 3 x 8 x 8\n    relu {char}\n"
               "    conv(4, 99)\n}\n")
    with pytest.raises(CnnError) as info:
        cnndsl.loads(outside, name="t.cnn")
    d = info.value.diagnostics[0]
    # a form feed is white space; the others are characters the grammar has no place for
    expected = ("E-shape", 4, 13) if char == "\f" else ("E-syntax", 3, 10)
    assert (d.code, d.span.line, d.span.column) == expected
    escaped = char.encode("unicode_escape").decode()
    quoted = "4 |     conv(4, 99)" if char == "\f" else f"3 |     relu {escaped}"
    assert quoted + "\n" in info.value.render()  # quoted escaped, at its own line


@pytest.mark.parametrize("text", [
    "\ufeffnetwork n() {\n    input image: 3 x 8 x 8\n    conv(4, 99)\n}\n",
    "network n() {\r\n    input image: 3 x 8 x 8\r\n    conv(4, 99)\r\n}\r\n",
    "network n() {\r    input image: 3 x 8 x 8\r    conv(4, 99)\r}\r",
], ids=["bom", "crlf", "lone-cr"])
def test_byte_order_mark_and_line_ends_are_read_as_newlines(text):
    with pytest.raises(CnnError) as info:
        cnndsl.loads(text, name="t.cnn")
    d = info.value.diagnostics[0]
    assert (d.code, d.span.line, d.span.column) == ("E-shape", 3, 13)
    assert "3 |     conv(4, 99)\n" in info.value.render()


def test_a_keyword_ends_at_a_word_boundary():
    """`networkfoo() {` parsed as `network foo`; `input_image` and `notes` were split."""
    with pytest.raises(CnnError) as info:
        cnndsl.loads("networkfoo() {\n    input image: 3 x 8 x 8\n}\n", name="t.cnn")
    d = info.value.diagnostics[0]
    assert (d.code, d.span.line, d.span.column) == ("E-syntax", 1, 1)
    model = cnndsl.loads("network n() {\n    input input_image: 3 x 8 x 8\n"
                         "    notes = input_image -> relu\n    output notes\n}\n")
    assert model.ir.inputs[0].name == "input_image" and model.ir.output_names == ("notes",)


@pytest.mark.parametrize("backend", ["to_torch_source", "to_torch", "to_onnx", "summary",
                                     "to_dot"])
def test_back_ends_run_with_the_cyclic_gc_paused_and_restore_it(backend):
    """Issue 10 #8: the GC's rescans of a large IR made the back ends superlinear (a
    51,567-layer module: 136 us a layer, 79 us with the GC paused, as the checker runs)."""
    import gc
    model = cnndsl.loads("network n() {\n    input x: 2 x 4 x 4\n"
                         + "    conv(2, 3, padding=1) -> relu\n" * 1500 + "}\n")
    collections = []

    def count(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    getattr(model, backend)()  # its imports done (an import may collect on its own)
    gc.collect()
    gc.callbacks.append(count)
    try:
        getattr(model, backend)()
    finally:
        gc.callbacks.remove(count)
    assert len(collections) <= 1 and gc.isenabled()  # at most one, as the GC resumes
