"""Issue 9: what a newcomer following the README hit — each a regression test."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import cnndsl
from cnndsl.runtime import create_session
from conftest import ROOT, import_file, run_cli

RESNET_LIKE = """
network r(classes: int = 10) {
    input image: 3 x 32 x 32
    conv(16, 3, padding=1)
    layer1: basic(16) * 2
    layer2: (basic(32, stride=2) -> basic(32))
    layer3: basic(64, stride=2)
    one: basic(64) * 1
    global_avgpool -> flatten -> linear(classes)
}
"""


def _three_ways(model, tmp_path, x):
    """The in-memory module, the generated source and onnxruntime on one input."""
    module = model.to_torch().eval()
    path = tmp_path / "gen.py"
    path.write_text(model.to_torch_source())
    generated = import_file(path, f"gen_{abs(hash(str(tmp_path)))}").build().eval()
    generated.load_state_dict(module.state_dict())
    session = create_session(model.to_onnx(weights=module.state_dict()).SerializeToString(),
                             "cpu")
    with torch.no_grad():
        return (module(x).numpy(), generated(x).numpy(), session.run(x.numpy())[0])


def test_labelled_repeats_and_groups_of_blocks_work_everywhere(tmp_path):
    model = cnndsl.loads(RESNET_LIKE)
    assert "layer1 (sequence)" in model.summary() and "  1 (basic)" in model.summary()
    assert "<svg" in model._repr_html_() or "<details>" in model._repr_html_()
    names = list(model.to_torch().state_dict())
    assert "layer1.1.conv2.weight" in names and "layer2.0.shortcut_conv1.weight" in names
    assert "layer2.1.conv1.weight" in names and "one.0.conv1.weight" in names
    assert not any(n.startswith("basic") for n in names)  # the group named both calls
    a, b, c = _three_ways(model, tmp_path, torch.randn(2, 3, 32, 32))
    assert np.array_equal(a, b) and np.abs(a - c).max() < 1e-4
    assert model.shape("layer2") == (32, 16, 16) and model.shape("layer3") == (64, 8, 8)
    assert model.shape("layer1.0") == (16, 32, 32)
    with pytest.raises(KeyError, match="no layer or input `layer9`"):
        model.shape("layer9")


def test_a_label_on_a_block_call_names_its_output():
    model = cnndsl.loads("""
network n() {
    input image: 3 x 16 x 16
    stem: basic(3)
    head = stem -> conv(4, 1)
    output head
}""")
    stem = next(s for s in model.ir.scopes if s.path == ("stem",))
    assert model.ir.node("conv1").inputs == (stem.output,)
    assert model.ir.output_names == ("head",) and model.shape("stem") == (3, 16, 16)


@pytest.mark.parametrize("op", ["avgpool", "maxpool"])
def test_asymmetric_same_padding_pools_like_onnxruntime(op, tmp_path):
    """`same` at stride 2 pads one more row at the end: F.pad's zeros must not be counted
    by avgpool(count_include_pad=false), nor win a max."""
    worst = 0.0
    for size, k, s, count_pad, ceil in itertools.product((7, 8), (2, 3), (2, 3), (True, False),
                                                         (False, True)):
        extra = f", count_include_pad={str(count_pad).lower()}" if op == "avgpool" else ""
        model = cnndsl.loads(f"network p() {{\n input x: 2 x {size} x {size}\n {op}({k}, "
                             f"stride={s}, padding=same, ceil_mode={str(ceil).lower()}"
                             f"{extra})\n}}")
        a, b, c = _three_ways(model, tmp_path, torch.rand(1, 2, size, size) + 0.5)
        worst = max(worst, np.abs(a - c).max(), np.abs(b - c).max())
    assert worst < 1e-5


def test_all_ones_average_stays_one_at_the_padded_edge():
    model = cnndsl.loads("network p() {\n input x: 1 x 8 x 8\n avgpool(3, stride=2, "
                         "padding=same, count_include_pad=false)\n}")
    with torch.no_grad():
        out = model.to_torch()(torch.ones(1, 1, 8, 8))
    assert torch.allclose(out, torch.ones_like(out))


def test_onnx_inputs_and_outputs_carry_the_specs_names():
    model = cnndsl.loads("""
network two(classes: int = 4) {
    input pixels: 1 x 8 x 8
    logits = pixels -> flatten -> linear(classes)
    probs = logits -> softmax
    output logits, probs
}""")
    proto = model.to_onnx()
    assert [i.name for i in proto.graph.input] == ["pixels"]
    assert [o.name for o in proto.graph.output] == ["logits", "probs"]
    session = create_session(proto.SerializeToString(), "cpu")
    logits, probs = session.run(np.random.rand(2, 1, 8, 8).astype(np.float32))
    assert np.allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), atol=1e-6)


def test_an_output_listed_twice_is_an_error():
    with pytest.raises(cnndsl.CnnError, match="`a` is listed twice"):
        cnndsl.loads("network n() {\n input x: 1 x 4 x 4\n a = x -> relu\n output a, a\n}")


@pytest.mark.parametrize("spec", ["resnet18", "resnet34", "resnet50", "resnet101",
                                  "resnet152"])
def test_strict_passes_on_the_zoos_resnets(spec):
    """The automatic 1x1 stride-2 projection is cnndsl's code, not the user's: no W-stride."""
    result = run_cli("check", f"specs/{spec}.cnn", "--strict")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_strided_residual_in_a_users_block_has_no_projection_warning():
    model = cnndsl.loads(RESNET_LIKE)
    assert not model.warnings


def test_set_takes_several_values_after_one_flag():
    result = run_cli("check", "specs/efficientnet.cnn", "--set", "depth=1.1", "resolution=240",
                     "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"] == 7_794_184


def _errors(text: str) -> list:
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(text, name="t.cnn")
    return [d for d in info.value.diagnostics if d.severity == "error"]


def test_a_block_takes_one_input():
    errors = _errors("block b() {\n    input x\n    input skip\n    add(x, skip)\n}\n"
                     "network n() {\n    input image: 3 x 8 x 8\n    b()\n}")
    assert [(e.code, e.span.line, e.span.column) for e in errors] == [("E-input", 3, 5)]
    assert errors[0].message == "a block names the tensor it receives once"
    assert "block b(skip: tensor)" in errors[0].help  # the spelling that exists for it


def test_the_zoo_checks_without_warnings_under_strict():
    """specs/densenet121.cnn gave three W-label warnings (`block1: dense_block(...) ->
    transition` labels the dense block only); squeezenet1_1's W-stride is torchvision's
    own (its pools do not tile 111 / 55 / 27 exactly)."""
    for spec in sorted((ROOT / "specs").glob("*.cnn")):
        result = run_cli("check", str(spec.relative_to(ROOT)), "--strict")
        if spec.name == "squeezenet1_1.cnn":
            assert result.returncode == 1 and "error[W-stride]" in result.stderr
            continue
        assert (spec.name, result.returncode, result.stderr) == (spec.name, 0, "")


@pytest.mark.parametrize("text, code", [
    ("network n() {\n    input image: 32 x 32 x 3\n    conv(4, 3)\n}\n", "W-layout"),
    ("network n() {\n    input image: 3 x 8 x 8\n    e = image -> relu\n    conv(4, 3)\n}\n",
     "W-unused"),
])
def test_strict_makes_every_warning_an_error(text, code, tmp_path):
    spec = tmp_path / "w.cnn"
    spec.write_text(text)
    assert run_cli("check", str(spec)).returncode == 0
    result = run_cli("check", str(spec), "--strict")
    assert result.returncode == 1 and f"error[{code}]" in result.stderr


def test_a_block_with_two_outputs_is_not_one_step():
    errors = _errors("block b() {\n    input x\n    a = x -> relu\n    c = x -> sigmoid\n"
                     "    output a, c\n}\nnetwork n() {\n    input image: 3 x 8 x 8\n"
                     "    b() -> conv(4, 1)\n}")
    assert [(e.code, e.span.line) for e in errors] == [("E-block", 9)]
    assert errors[0].related[0].span.line == 5


def test_a_block_named_like_a_layer_shadows_it_with_a_warning():
    """A user's definition wins over a built-in layer, as over the standard library
    (issue 22: specs written before a layer of that name existed keep checking)."""
    model = cnndsl.loads("block relu() {\n    sigmoid\n}\nnetwork n() {\n"
                         "    input image: 3 x 8 x 8\n    relu\n}")
    assert [(w.code, w.span.line, w.span.column) for w in model.warnings] == [
        ("W-shadow", 1, 7)]
    assert [node.op for node in model.ir.nodes] == ["sigmoid"]


def test_a_failed_assignment_gives_no_follow_on_errors():
    errors = _errors("network n() {\n    input image: 3 x 8 x 8\n    e4 = image -> conv(4, 3)\n"
                     "    skip = e4 -> pad(-4)\n    a = skip -> relu\n    b = skip -> relu\n"
                     "    output a, b\n}")
    assert [(e.code, e.span.line) for e in errors] == [("E-arg", 4)]


def test_a_problem_in_a_block_called_twice_is_reported_once():
    errors = _errors("block b() {\n    conv(4, 9)\n}\nnetwork n() {\n"
                     "    input image: 3 x 8 x 8\n    p = image -> b()\n    q = image -> b()\n"
                     "    output p, q\n}")
    assert len(errors) == 1 and errors[0].code == "E-shape"


@pytest.mark.parametrize("argv", [
    ("run", "specs/lenet5.cnn"), ("run", "specs/lenet5.cnn", "--bench", "3"),
    ("compile", "specs/lenet5.cnn", "--to", "onnx", "-o", "{tmp}/l.onnx"),
    ("compile", "specs/lenet5.cnn", "--to", "torch", "-o", "{tmp}/l.py"),
    ("render", "specs/lenet5.cnn", "-o", "{tmp}/l.dot"),
    ("check", "specs/lenet5.cnn"), ("summary", "specs/lenet5.cnn"),
    ("check", "tests/broken/kernel_too_large.cnn"),
])
def test_json_means_one_json_document_on_stdout(argv, tmp_path):
    result = run_cli(*(a.format(tmp=tmp_path) for a in argv), "--json")
    document = json.loads(result.stdout)  # nothing else on stdout
    assert isinstance(document, dict)
    if "broken" in argv[1]:
        assert result.returncode == 1 and document["ok"] is False
        assert document["errors"][0]["code"] == "E-shape"
    else:
        assert result.returncode == 0, result.stderr
    if argv[0] == "run":
        assert document["outputs"][0]["shape"] == [1, 10]
        assert ("benchmark" in document) == ("--bench" in argv)
    if argv[0] in ("compile", "render"):
        assert document["output"] == argv[-1].format(tmp=tmp_path)


def _one_line(line: str, image: str = "3 x 32 x 32") -> list:
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(f"network n() {{\n    input image: {image}\n    {line}\n}}", name="t.cnn")
    return [(d.code, d.span.column, d.message, d.help) for d in info.value.diagnostics
            if d.severity == "error"]


@pytest.mark.parametrize("line, column, help_part", [
    ("conv(3, 32, 3)", 17, "PyTorch's Conv2d(3, 32, 3) is conv(32, 3)"),
    ("batchnorm(32)", 15, "PyTorch's BatchNorm2d(32) is batchnorm"),
    ("flatten -> linear(3072, 10)", 29, "PyTorch's Linear(84, 10) is linear(10)"),
    ("conv(16, 3, in_channels=3)", 17, "input channels are inferred: drop it"),
    ("conv(16, kernel_size=3)", 14, "in cnndsl it is `kernel`"),
    ("hardtanh", 5, "is not a cnndsl layer"),  # not `tanh`: another function
])
def test_pytorch_habits_get_the_cnn_spelling(line, column, help_part):
    (code, col, _, help_text), *_ = _one_line(line)
    assert col == column and help_part in help_text


def test_every_unknown_name_of_a_line_in_one_run():
    errors = _one_line("conv(16, 3, strides=2) -> ReLU -> BatchNorm2d")
    assert [(c, col, h) for c, col, _, h in errors] == [
        ("E-arg", 17, "in cnndsl it is `stride`"), ("E-name", 31, "in cnndsl it is `relu`"),
        ("E-name", 39, "in cnndsl it is `batchnorm`")]


@pytest.mark.parametrize("line, column, message", [
    ("batchnorm(eps=-1)", 19, "must be in (0, 1), found -1"),
    ("batchnorm(momentum=2)", 24, "must be in [0, 1], found 2"),
    ("maxpool(2, stride=2**31)", 23, "must be at most 2,147,483,647"),
    ("conv(16, 3, dilation=2**40)", 26, "must be at most 2,147,483,647"),
    ("lrn(size=2**62)", 14, "must be at most"),
    ("lrn(size=4)", 14, "must be odd, found 4"),
    ("dropout(1.5)", 13, "must be in [0, 1), found 1.5"),
    ("conv(0, 3)", 10, "must be at least 1, found 0"),
])
def test_values_the_back_ends_refuse_are_refused_at_the_argument(line, column, message):
    (code, col, text, _), *_ = _one_line(line)
    assert code == "E-arg" and col == column and message in text


def test_channels_last_input_is_a_warning_with_the_right_spelling():
    model = cnndsl.loads("network n() {\n    input image: 32 x 32 x 3\n    flatten\n}")
    (warning,) = model.warnings
    assert warning.code == "W-layout" and "input image: 3 x 32 x 32" in warning.help


def test_untyped_network_parameter_shows_the_typed_spelling():
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads("network n(classes=10) {\n    input image: 3 x 8 x 8\n}")
    assert info.value.diagnostics[0].help == "parameters are typed: `classes: int = 10`"


def test_a_misspelt_parameter_in_an_argument_gets_a_suggestion():
    (code, col, _, help_text), = _one_line("flatten -> linear(clases)")
    assert (code, col) == ("E-arg", 23)
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads("network n(classes: int = 3) {\n    input image: 3 x 8 x 8\n"
                     "    flatten -> linear(clases)\n}")
    assert info.value.diagnostics[0].help == "did you mean `classes`?"
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.load("specs/lenet5.cnn", clases=5)
    assert info.value.diagnostics[0].help == "did you mean `classes`?"


def test_in_channels_at_network_level_says_where_it_exists():
    (_, _, _, help_text), = _one_line("conv(in_channels * 2, 3)")
    assert "exists only inside a block" in help_text


def test_a_missing_brace_points_at_the_brace_left_open():
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads("network n() {\n    input image: 3 x 8 x 8\n    residual {\n"
                     "        conv(3, 3, padding=1)\n    relu\n}\n", name="t.cnn")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.column, d.message) == (3, 14, "this `{` is never closed")


def test_a_residual_that_never_adds_is_a_warning_in_a_network():
    model = cnndsl.loads("network n() {\n    input image: 3 x 8 x 8\n"
                         "    residual(project=false) {\n        conv(4, 3, padding=1)\n    }\n}")
    assert [w.code for w in model.warnings] == ["W-residual"]
    assert not cnndsl.load("specs/mobilenet_v2.cnn").warnings  # in blocks: by design


def test_concat_help_names_what_the_language_has():
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads("network n() {\n    input image: 3 x 8 x 8\n    a = image -> conv(4, 3)\n"
                     "    concat(image, a)\n}")
    assert "crop(like=...)" in info.value.diagnostics[0].help  # both exist in the language
    assert "pad(" in info.value.diagnostics[0].help


@pytest.mark.parametrize("size, ok", [("1G", True), ("100M", True), ("4GiB", True),
                                      ("512MiB", True), ("inf", False), ("0.5", False),
                                      ("nan", False), ("lots", False)])
def test_memory_limit_spellings(size, ok):
    result = run_cli("check", "specs/lenet5.cnn", "--memory-limit", size)
    assert result.returncode == (0 if ok else 2), result.stderr
    assert "Traceback" not in result.stderr


def test_explain_lists_codes_and_takes_any_case():
    listing = run_cli("explain")
    assert listing.returncode == 0 and "E-shape" in listing.stdout
    assert "W-layout" in listing.stdout
    assert run_cli("explain", "e-SHAPE").stdout.startswith("E-shape:")
    wrong = run_cli("explain", "e-shap")
    assert wrong.returncode == 2 and "did you mean `E-shape`?" in wrong.stderr


README_RESNET = next(b for b in __import__("test_docs").blocks("cnn")
                     if "network resnet18" in b[1])[1]


def test_the_readmes_labelled_groups_name_every_call():
    """b06: `layer2: basic(...) -> basic(...)` named one call `layer2` and the next a
    top-level `basic1`; the README's group spelling names both `layer2.0`, `layer2.1`."""
    model = cnndsl.loads(README_RESNET, classes=10)
    tops = {k.split(".")[0] for k in model.to_torch().state_dict()}
    assert tops == {"conv1", "batchnorm1", "layer1", "layer2", "layer3", "layer4", "fc"}
    assert model.shape("layer2") == (128, 28, 28) and model.shape("layer4.1") == (512, 7, 7)
    assert not model.warnings


def test_a_label_on_a_chain_of_block_calls_is_a_warning_with_the_group_spelling():
    text = README_RESNET.replace("layer3: (basic(256, stride=2) -> basic(256))",
                                 "layer3: basic(256, stride=2) -> basic(256)")
    (warning,) = cnndsl.loads(text, name="r.cnn").warnings
    assert (warning.code, warning.span.line, warning.span.column) == ("W-label", 15, 5)
    assert warning.message == ("the label `layer3` names only the first step of this chain, "
                               "`basic(256, stride=2)`")
    assert warning.help.endswith("`layer3: (basic(256, stride=2) -> basic(256))`")
    # a label on a layer that a chain goes on from is what it says: no warning
    assert not cnndsl.loads("network n() {\n    input image: 3 x 8 x 8\n"
                            "    stem: conv(4, 3) -> relu -> basic(4)\n}").warnings


def test_a_residual_no_call_of_a_block_adds_is_a_warning():
    """b07: the warning fired only in a network; a block whose every call drops its
    residual says so once, at the residual (the stdlib's MBConv adds in some calls)."""
    model = cnndsl.loads("block b(c: int) {\n    residual(project=false) {\n"
                         "        conv(c, 3, padding=1)\n    }\n}\nnetwork n() {\n"
                         "    input image: 3 x 8 x 8\n    b(4) -> b(8) -> b(16)\n}", name="t.cnn")
    (warning,) = model.warnings
    assert (warning.code, warning.span.line, warning.span.column) == ("W-residual", 2, 5)
    assert "in any call of `b`" in warning.message
    adds_once = cnndsl.loads("block b(c: int) {\n    residual(project=false) {\n"
                             "        conv(c, 3, padding=1)\n    }\n}\nnetwork n() {\n"
                             "    input image: 3 x 8 x 8\n    b(4) -> b(4)\n}")
    assert not adds_once.warnings
    assert not cnndsl.loads("network n() {\n    input image: 3 x 8 x 8\n"
                            "    inverted_residual(16, 2, 6)\n}").warnings


@pytest.mark.parametrize("word", ["hard_sigmoid", "logsigmoid", "softmin", "celu", "glu",
                                  "hardshrink", "adaptive_maxpool", "tanhshrink", "softsign",
                                  "Hardtanh", "rrelu", "Dropout2d", "MaxPool1d", "quick_gelu",
                                  "pool"])
def test_no_near_miss_for_a_different_function(word):
    """b08: `hard_sigmoid` got "did you mean `sigmoid`?", `tanhshrink` `transition`."""
    (code, col, message, help_text), = _one_line(word)
    assert (code, col, message) == ("E-name", 5, f"unknown name `{word}`")
    assert help_text is None or "did you mean" not in help_text


@pytest.mark.parametrize("word, spelling", [("max_pool2d", "maxpool"), ("Conv2d", "conv"),
                                            ("LeakyReLU", "leaky_relu"), ("interpolate",
                                                                          "upsample"),
                                            ("local_response_norm", "lrn"), ("rellu", "relu"),
                                            ("relus", "relu"), ("batchnrom", "batchnorm")])
def test_spellings_and_typos_still_get_the_cnn_name(word, spelling):
    (_, _, _, help_text), = _one_line(word)
    assert f"`{spelling}`" in help_text


def test_torch_names_list_covers_torchs_layers():
    import inspect

    from cnndsl.suggest import TORCH_NAMES
    modules = {n for n, v in vars(torch.nn).items() if inspect.isclass(v)
               and issubclass(v, torch.nn.Module) and not n.startswith("_")}
    functions = {n for n in dir(torch.nn.functional) if not n.startswith("_") and n not in (
        "Optional", "assert_int_or_pair", "boolean_dispatch", "handle_torch_function")
        and not n.startswith("has_torch_function") and inspect.isroutine(
            getattr(torch.nn.functional, n))}
    assert modules | functions <= TORCH_NAMES


@pytest.mark.parametrize("word, spelling", [("False", "false"), ("True", "true")])
def test_python_booleans_get_the_cnn_spelling(word, spelling):
    """b09: `bias=False` said "`False` is not a parameter here"."""
    (code, col, _, help_text), = _one_line(f"conv(16, 3, bias={word})")
    assert (code, col) == ("E-arg", 22) and help_text.startswith(f"write `{spelling}`")
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(f"network n(b: bool = {word}) {{\n    input image: 3 x 8 x 8\n}}")
    assert info.value.diagnostics[0].help.startswith(f"write `{spelling}`")


def test_a_brace_left_open_before_the_next_definition_is_pointed_at():
    """b10: "expected ..., found `network`" at 7:1; the `{` left open is at 2:19."""
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads("block b() {\n    branch concat {\n        relu\n        sigmoid\n\n}\n"
                     "network n() {\n    input image: 3 x 8 x 8\n    b\n}\n", name="t.cnn")
    (d,) = info.value.diagnostics
    assert (d.code, d.span.line, d.span.column, d.message) == ("E-syntax", 2, 19,
                                                               "this `{` is never closed")
    assert d.related[0].span.line == 7
    with pytest.raises(cnndsl.CnnError) as info:  # balanced: a misplaced definition
        cnndsl.loads("network a() {\n    input x: 3 x 8 x 8\n    network b() {\n    }\n}\n")
    assert info.value.diagnostics[0].message.startswith("expected")


def test_the_arguments_of_an_unknown_layer_are_checked_in_the_same_run():
    """b11: `strides` was reported only once `Conv2d` had been renamed."""
    errors = _one_line("Conv2d(3, 32, 3, strides=1) -> basci(3, strid=2)")
    assert [(c, col, h) for c, col, _, h in errors] == [
        ("E-name", 5, "in cnndsl it is `conv`"),
        ("E-arg", 19, "input channels are inferred: PyTorch's Conv2d(3, 32, 3) is conv(32, 3); "
                      "stride, padding and the rest are keywords"),
        ("E-arg", 22, "in cnndsl it is `stride`"), ("E-name", 36, "did you mean `basic`?"),
        ("E-arg", 45, "did you mean `stride`?")]


def test_shape_knows_the_specs_tensor_and_output_names():
    """b20: `Model.shape("logits")` was a KeyError though `logits` is an output."""
    model = cnndsl.load("examples/two_outputs.cnn")
    assert model.ir.output_names == ("logits", "probs", "embedding")
    assert [model.shape(n) for n in model.ir.output_names] == [(10,), (10,), (64,)]
    assert model.shape("features") == model.shape("flatten1")
    with pytest.raises(KeyError, match="did you mean `logits`"):
        model.shape("logitz")


@pytest.mark.parametrize("argv, key", [
    (("explain",), "codes"), (("explain", "e-shape"), "explanation"),
    (("summary", "specs/lenet5.cnn"), "rows"),
])
def test_json_on_explain_and_summary_is_one_ok_document(argv, key):
    """b22: `explain --json` was a usage error, summary's JSON had no "ok"."""
    result = run_cli(*argv, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True and key in document


@pytest.mark.parametrize("argv, message", [
    (("check", "specs/lenet5.cnn", "--memory-limit", "lots"), "not a size: `lots`"),
    (("run", "specs/lenet5.cnn", "--batch", "-1"), "must be between 1 and 65,536"),
    (("explain", "e-shap"), "did you mean `E-shape`?"),
    (("check",), "the following arguments are required: spec"),
    (("compile", "specs/lenet5.cnn", "--to", "torch", "-o", "x.py", "--opset", "13"),
     "apply to --to onnx"),
    (("check", "specs/lenet5.cnn", "--frobnicate"), "unrecognized arguments: --frobnicate"),
])
def test_usage_errors_are_e_usage_and_one_json_document_under_json(argv, message, tmp_path):
    """b22: a usage error under --json printed nothing on stdout."""
    result = run_cli(*argv, "--json", cwd=tmp_path if argv[0] == "compile" else ROOT)
    assert result.returncode == 2
    (error,) = json.loads(result.stdout)["errors"]
    assert error["code"] == "E-usage" and message in error["message"]
    text = run_cli(*argv, cwd=tmp_path if argv[0] == "compile" else ROOT)
    assert text.returncode == 2 and text.stdout == ""
    assert "error[E-usage]: " in text.stderr and message in text.stderr


def test_a_warning_in_a_block_called_twice_is_reported_once():
    model = cnndsl.loads("block u(c: int) {\n    conv(c, 3, padding=1)\n}\nblock b() {\n"
                         "    s: u(4) -> u(4)\n}\nnetwork n() {\n    input image: 3 x 8 x 8\n"
                         "    b -> b\n}")
    assert [(w.code, w.span.line) for w in model.warnings] == [("W-label", 5)]
