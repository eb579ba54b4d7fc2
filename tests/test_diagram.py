"""Diagrams (DOT golden files, every node and shape present, real renders) and summaries."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import pytest

import cnndsl
from cnndsl.backends.diagram import shape_text, to_dot
from conftest import ROOT, SPECS, ZOO_SPECS, golden, run_cli

GOLDEN = ROOT / "tests" / "golden" / "dot"
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT and not os.environ.get("CI"),
                               reason="graphviz is not installed (CI installs it)")


@pytest.mark.parametrize("spec", ["lenet5", "resnet18", "googlenet"])
def test_golden_dot(spec):
    golden(GOLDEN / f"{spec}.dot", to_dot(cnndsl.load(SPECS / f"{spec}.cnn").ir))


def parse_dot(text: str):
    nodes = set(re.findall(r'^\s*"([^"]+)" \[label=', text, re.M))
    edges = {(a, b): label for a, b, label in
             re.findall(r'^\s*"([^"]+)" -> "([^"]+)"(?: \[label=" ([^"]*)"\])?;', text, re.M)}
    return nodes, edges


@pytest.mark.parametrize("spec", ZOO_SPECS)
def test_every_node_appears_with_the_shapes_pytorch_computes(spec):
    import torch
    model = cnndsl.load(SPECS / spec)
    with torch.device("meta"):  # shapes only: PyTorch's own shape rules, no arithmetic
        module = model.to_torch()
        values = module.run_all(*(torch.zeros(1, *i.shape) for i in model.inputs))
    nodes, edges = parse_dot(to_dot(model.ir, depth=99))
    for node in model.layers:
        assert node.name in nodes, node.name
        for source in node.inputs:
            label = edges[(source, node.name)]
            assert label == shape_text(tuple(values[source].shape[1:])), (source, node.name)
    for output in model.ir.outputs:
        assert any(a == output for a, _ in edges)


def test_residual_and_branches_meet_at_merge_nodes():
    model = cnndsl.load(SPECS / "resnet18.cnn")
    text = to_dot(model.ir, depth=99)
    _, edges = parse_dot(text)
    add = "layer2.basic1.add1"
    sources = {a for a, b in edges if b == add}
    assert sources == {"layer2.basic1.batchnorm2", "layer2.basic1.shortcut_batchnorm1"}
    assert f'"{add}" [label="+", fillcolor="#ffffff", shape=circle' in text
    assert 'subgraph "cluster_layer2.basic1"' in text


def test_depth_folds_blocks_and_runs_of_identical_calls():
    model = cnndsl.load(SPECS / "resnet50.cnn")
    text = to_dot(model.ir, depth=1)
    assert '"layer1.bottleneck2" [label="bottleneck(64, 1, 4, 1, 64) × 2"' in text
    assert '"layer3.bottleneck2" [label="bottleneck(256, 1, 4, 1, 64) × 5"' in text
    assert "layer1.bottleneck3" not in text  # folded into the run
    nodes, edges = parse_dot(text)
    assert edges[("layer1.bottleneck2", "layer2.bottleneck1")] == "256×56×56"
    top = to_dot(model.ir, depth=0)
    assert '"layer4" [label="layer4: bottleneck_stage(512, 3, 2, 1, 64)"' in top


def test_options_direction_shapes_and_params():
    ir = cnndsl.load(SPECS / "lenet5.cnn").ir
    text = to_dot(ir, direction="LR", shapes=False, params=True)
    assert "rankdir=LR" in text and "label=\" 6×28×28\"" not in text
    assert '"c1" [label="c1: conv 5x5, 6\\n156 params"' in text


@needs_dot
@pytest.mark.parametrize("fmt", ["svg", "png", "pdf"])
def test_real_renders(tmp_path, fmt):
    out = tmp_path / f"googlenet.{fmt}"
    result = run_cli("render", "specs/googlenet.cnn", "-o", str(out))
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    magic = {"svg": b"<?xml", "png": b"\x89PNG", "pdf": b"%PDF"}[fmt]
    assert data.startswith(magic) and len(data) > 10_000
    if fmt == "svg":
        assert b"inception3a: inception(64, 96, 128, 16, 32, 32, 3)" in data


def test_without_dot_the_dot_file_is_written_and_install_is_explained(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    result = run_cli("render", "specs/lenet5.cnn", "-o", str(tmp_path / "lenet.png"),
                     env={"PATH": str(bin_dir)})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "apt-get install graphviz" in result.stderr
    assert (tmp_path / "lenet.dot").read_text().startswith('digraph "lenet5"')
    assert not (tmp_path / "lenet.png").exists()


@needs_dot
def test_notebook_shows_the_diagram_and_summary():
    model = cnndsl.load(SPECS / "lenet5.cnn")
    svg = model._repr_svg_()
    assert svg.lstrip().startswith("<?xml") and "conv 5x5, 6" in svg
    html = model._repr_html_()
    assert "<svg" in html and "61,706" in html


@pytest.mark.parametrize("spec", ZOO_SPECS)
def test_summary_totals_equal_the_compiled_module(spec):
    model = cnndsl.load(SPECS / spec)
    result = run_cli("summary", "--json", f"specs/{spec}")
    report = json.loads(result.stdout)
    module = model.to_torch()
    assert report["totals"]["params"] == sum(p.numel() for p in module.parameters())
    top = [r for r in report["rows"] if r["depth"] == 0]
    assert sum(r["params"] for r in top) == report["totals"]["params"]
    assert sum(r["macs"] for r in top) == model.macs
    assert report["totals"]["buffers"] == sum(b.numel() for b in module.buffers())


def test_summary_table_nesting_and_conventions():
    result = run_cli("summary", "specs/resnet18.cnn", "--depth", "2")
    out = result.stdout
    assert "layer1 (basic_stage)" in out and "  basic1 (basic)" in out
    assert "    conv1 (conv)" not in out  # depth 2 stops at blocks
    assert "parameters         11,689,512 (trainable 11,689,512, frozen 0)" in out
    assert "activation memory" in out and "an estimate" in out
    deeper = run_cli("summary", "specs/resnet18.cnn", "--depth", "3").stdout
    assert "    conv1 (conv)" in deeper


@needs_dot
def test_a_flat_network_of_40000_layers_renders(tmp_path):
    """graphviz segfaulted on 40,000 nodes in a row: the middle of a level is one node."""
    model = cnndsl.loads("network flat() {\n    input x: 1 x 4 x 4\n"
                         + "    relu\n" * 40_000 + "}\n")
    dot_text = model.to_dot()
    nodes, edges = parse_dot(dot_text)
    assert len(nodes) < 1_000 and "… 39,600 more layers …" in dot_text
    out = tmp_path / "flat.svg"
    model.render(out)
    assert out.read_bytes().lstrip().startswith(b"<?xml")


def test_a_failing_dot_is_reported_with_its_status(tmp_path, monkeypatch):
    from cnndsl.backends import diagram
    fake = tmp_path / "dot"
    fake.write_text("#!/bin/sh\nkill -SEGV $$\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match=r"graphviz's dot failed \(signal SIGSEGV\): it "
                                           r"printed nothing"):
        diagram.render('digraph "g" { a -> b }', "svg")
    fake.write_text("#!/bin/sh\necho 'syntax error in line 1' >&2\nexit 3\n")
    with pytest.raises(RuntimeError, match=r"\(exit status 3\): syntax error in line 1"):
        diagram.render("digraph {", "svg")
