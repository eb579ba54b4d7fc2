"""Issue 10: names and paths from someone you do not trust. Nothing from a spec or its path
reaches generated code except as a checked identifier or an escaped literal; a name no
back end can use as it is gets a located error; every other name works everywhere, with
the same state_dict names in the module, the generated source and ONNX."""

from __future__ import annotations

import keyword
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import cnndsl
from cnndsl.names import MODULE_ATTRIBUTES
from cnndsl.runtime import create_session
from conftest import ROOT, import_file

INJECTION = 'm"""\n__import__("pathlib").Path("PWNED").touch()\n""".cnn'


@pytest.mark.parametrize("file_name", [INJECTION, "back\\slash.cnn", "tab\tand\x1bescape.cnn",
                                       "quote'\".cnn", "uni\u2028code.cnn"])
def test_a_hostile_file_name_never_becomes_code(file_name, tmp_path):
    spec = tmp_path / file_name
    spec.write_text((ROOT / "specs" / "lenet5.cnn").read_text())
    out = tmp_path / "out.py"
    result = subprocess.run([sys.executable, "-m", "cnndsl", "compile", str(spec), "--to",
                             "torch", "-o", str(out)], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    # importing the generated module runs nothing but the model's definition
    subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(out)!r})"],
                   cwd=tmp_path, check=True)
    assert not (tmp_path / "PWNED").exists()
    module = import_file(out, "hostile_name")
    assert module.build()(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_loads_with_a_hostile_name_never_becomes_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "specs" / "lenet5.cnn").read_text()
    source = cnndsl.loads(text, name=INJECTION).to_torch_source()
    compile(source, "generated", "exec")  # valid Python
    (tmp_path / "g.py").write_text(source)
    import_file(tmp_path / "g.py", "hostile_loads")
    assert not (tmp_path / "PWNED").exists()


def test_module_attribute_list_covers_torchs():
    public = {n for n in set(dir(torch.nn.Module)) | set(vars(torch.nn.Module()))
              if not n.startswith("_")}
    assert public <= MODULE_ATTRIBUTES


NAMES = sorted(set(keyword.kwlist) | {
    "None", "True", "False", "forward", "training", "eval", "to", "cuda", "state_dict",
    "train", "float", "type", "__w", "__class__", "_x", "self", "super", "max", "min", "F",
    "f", "nn", "torch", "math", "x", "y", "z", "build", "Net", "sequential", "module", "net",
    "true", "same", "in_channels", "print", "exec", "__init__", "__dict__", "run_all"})
POSITIONS = {
    "label": "network n() {{\n input image: 3 x 8 x 8\n {N}: conv(4, 3)\n relu\n}}",
    "tensor": "network n() {{\n input image: 3 x 8 x 8\n {N} = image -> conv(4, 3)\n"
              " out = {N} -> relu\n output out\n}}",
    "input": "network n() {{\n input {N}: 3 x 8 x 8\n conv(4, 3)\n}}",
    "block": "block {N}(c: int) {{\n conv(c, 3) -> relu\n}}\nnetwork n() {{\n"
             " input image: 3 x 8 x 8\n {N}(4) -> {N}(5)\n}}",
    "block parameter": "block b({N}: int) {{\n conv({N} * 2, 3)\n}}\nnetwork n() {{\n"
                       " input image: 3 x 8 x 8\n b(2) -> b(3)\n}}",
    "network": "network {N}() {{\n input image: 3 x 8 x 8\n conv(4, 3)\n}}",
    "network parameter": "network n({N}: int = 4) {{\n input image: 3 x 8 x 8\n"
                         " conv({N}, 3)\n}}",
    "label in a block": "block b() {{\n {N}: conv(4, 3) -> relu\n}}\nnetwork n() {{\n"
                        " input image: 3 x 8 x 8\n b() -> b()\n}}",
    "repeat in a block": "block a() {{\n conv(3, 3, padding=1)\n}}\nblock b() {{\n"
                         " {N}: a() * 2\n}}\nnetwork n() {{\n input image: 3 x 8 x 8\n"
                         " b() -> relu\n}}",
}


@pytest.mark.parametrize("position", POSITIONS)
def test_hostile_names_are_refused_or_work_in_every_back_end(position, tmp_path):
    refused = compiled = 0
    for i, name in enumerate(NAMES):
        text = POSITIONS[position].format(N=name)
        try:
            model = cnndsl.loads(text, name="h.cnn")
        except cnndsl.CnnError as exc:
            assert exc.diagnostics[0].span is not None, (name, exc.diagnostics[0].message)
            refused += 1
            continue
        module = model.to_torch().eval()
        path = tmp_path / f"g{i}.py"
        path.write_text(model.to_torch_source())
        generated = import_file(path, f"hostile_{position.replace(' ', '_')}_{i}").build()
        assert list(generated.state_dict()) == list(module.state_dict()), name
        generated.load_state_dict(module.state_dict())
        proto = model.to_onnx(weights=module.state_dict())
        assert {i.name for i in proto.graph.initializer} <= set(module.state_dict()), name
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            expected = module(x)
            assert torch.equal(generated.eval()(x), expected), name
        actual = create_session(proto.SerializeToString(), "cpu").run(x.numpy())[0]
        assert np.abs(actual - expected.numpy()).max() < 1e-4, name
        compiled += 1
    assert refused and compiled  # both kinds occur in every position but the keywords'


def test_keyword_and_reserved_names_get_a_located_error_with_a_spelling():
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads("network n() {\n input image: 3 x 8 x 8\n forward: conv(4, 3)\n}")
    d = info.value.diagnostics[0]
    assert (d.code, d.span.line) == ("E-name", 3) and d.help == "call it e.g. `forward_`"
    with pytest.raises(cnndsl.CnnError, match="declared twice"):
        cnndsl.loads("block b(a: int, a: int) {\n relu\n}\nnetwork n() {\n"
                     " input image: 3 x 8 x 8\n b(1, 2)\n}")
    with pytest.raises(cnndsl.CnnError, match="word of the language"):
        cnndsl.loads("network n(same: int = 1) {\n input image: 3 x 8 x 8\n"
                     " conv(4, 3, padding=same)\n}")


def test_a_labelled_repeat_of_a_block_inside_a_block_runs_in_every_back_end(tmp_path):
    model = cnndsl.loads("block a() {\n conv(3, 3, padding=1) -> relu\n}\nblock b() {\n"
                         " r: a() * 2\n}\nnetwork n() {\n input image: 3 x 8 x 8\n"
                         " b() -> relu\n}")
    module = model.to_torch().eval()
    path = tmp_path / "g.py"
    path.write_text(model.to_torch_source())
    generated = import_file(path, "repeat_in_block").build().eval()
    generated.load_state_dict(module.state_dict())
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(generated(x), module(x))
        assert not torch.equal(module(x), torch.relu(x))  # the convs ran


def test_escape_sequences_from_specs_and_paths_never_reach_the_terminal(tmp_path):
    import json
    spec = tmp_path / "esc\x1b[31mred\x07.cnn"
    spec.write_text("network n() {\n    conv(4, 9) # \x1b]0;title\x07 \x1b[2J \u202eevil\n"
                    "    input image: 3 x 8 x 8\n}\n")

    def check(*flags):
        result = subprocess.run([sys.executable, "-m", "cnndsl", "check", str(spec), *flags],
                                capture_output=True, text=True,
                                env={**os.environ, "NO_COLOR": "1"})
        assert result.returncode == 1
        assert not any(c in result.stdout + result.stderr for c in "\x1b\x07\u202e")
        return result
    assert "esc\\x1b[31mred\\x07.cnn:2:5" in check().stderr
    assert json.loads(check("--json").stdout)["ok"] is False


@pytest.mark.parametrize("text, line", [
    ("network n() {\n input image: 3 x 8 x 8\n image: conv(4, 3)\n relu\n}", 3),
    ("network n() {\n input image: 3 x 8 x 8\n image: relu * 2\n}", 3),
    ("network n() {\n input image: 3 x 8 x 8\n image: basic(3)\n}", 3),
    ("network n() {\n input image: 3 x 8 x 8\n image: (basic(3) -> basic(3))\n}", 3),
    ("network n() {\n input image: 3 x 8 x 8\n a = image -> conv(4, 3)\n a: relu\n"
     " output a\n}", 4),
    ("block b() {\n input x\n x: conv(4, 3)\n}\nnetwork n() {\n input image: 3 x 8 x 8\n b\n}",
     3),
    ("network n() {\n input a: 3 x 8 x 8\n c1: conv(4, 3)\n input c1: 3 x 8 x 8\n output c1\n}",
     4),
])
def test_a_label_or_an_input_never_takes_a_name_already_defined(text, line):
    """b05: `image: conv(4, 3)` after `input image` wrote an ONNX graph defining `image`
    twice (and the module's values overwrote the input)."""
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(text, name="h.cnn")
    d = info.value.diagnostics[0]
    assert (d.code, d.span.line, d.span.column) == ("E-name", line, 2)
    assert "already" in d.message


def test_an_input_named_like_an_automatic_name_keeps_its_own_value():
    model = cnndsl.loads("network n() {\n input relu1: 3 x 8 x 8\n relu\n}")
    assert [n.name for n in model.layers] == ["relu2"]
    x = torch.randn(2, 3, 8, 8)
    actual = create_session(model.to_onnx().SerializeToString(), "cpu").run(x.numpy())[0]
    assert np.array_equal(actual, torch.relu(x).numpy())


def test_a_block_named_like_a_keyword_is_refused_at_its_definition():
    """b12: `block residual() { ... }` checked clean but could never be called; every word
    the grammar keeps for itself is refused as a block's name."""
    from cnndsl.syntax import keywords
    assert {"residual", "branch", "input", "output", "train", "network"} <= keywords()
    for word in sorted(keywords()):
        with pytest.raises(cnndsl.CnnError) as info:
            cnndsl.loads(f"block {word}() {{\n    sigmoid\n}}\nnetwork n() {{\n"
                         "    input image: 3 x 8 x 8\n    relu\n}", name="h.cnn")
        d = info.value.diagnostics[0]
        assert (d.code, d.span.line, d.span.column) == ("E-name", 1, 7), word


ESCAPES = "\x1b]0;TITLE\x07\x1b[2J\r\x0c\u202e"


def test_escape_sequences_in_paths_never_reach_stdout_or_stderr(tmp_path):
    """b13: the file name's escapes reached the terminal raw in the check and summary
    headers (stdout), `run`'s "running on" line and the "wrote" lines; and onnxruntime's
    own log lines carried ANSI colour whatever NO_COLOR said."""
    spec = tmp_path / f"evil{ESCAPES}.cnn"
    spec.write_text("network n() {\n    input image: 1 x 4 x 4\n    relu\n}\n")
    bad = tmp_path / f"bad{ESCAPES}.cnn"
    bad.write_text("network n() {\n    input x: 2 x 12 x 8\n    conv_transpose(2, 3, "
                   "output_padding=1)\n}\n")
    out = f"o{ESCAPES}"
    runs = [["check", str(spec)], ["summary", str(spec)], ["run", str(spec)],
            ["compile", str(spec), "--to", "torch", "-o", out + ".py"],
            ["compile", str(spec), "--to", "onnx", "-o", out + ".onnx"],
            ["render", str(spec), "-o", out + ".dot"], ["run", out + ".onnx"],
            ["check", str(spec), ESCAPES], ["render", str(spec), "-o", "o.x" + ESCAPES],
            ["check", str(bad)], ["run", str(bad)]]
    for argv in runs:
        result = subprocess.run([sys.executable, "-m", "cnndsl", *argv], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "NO_COLOR": "1"})
        assert result.returncode in (0, 1, 2), (argv, result.stderr)
        shown = result.stdout + result.stderr
        assert not any(c in shown for c in "\x1b\x07\r\x0c\u202e"), (argv, shown)
        assert "\\x1b]0;title\\x07" in shown.lower(), (argv, shown)  # there, escaped
