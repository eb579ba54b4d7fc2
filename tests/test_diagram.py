"""Diagrams (DOT golden files, every node and shape present, real renders) and summaries."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from importlib.metadata import version

import pytest

import cnndsl
from cnndsl.backends import diagram
from cnndsl.backends.diagram import shape_text, to_dot
from cnndsl.cli import main
from conftest import ROOT, SPECS, ZOO_SPECS, golden, path_without_dot, run_cli

GOLDEN = ROOT / "tests" / "golden" / "dot"
# Every engine installed here draws in these tests: the bundled one always (`make test`
# installs pygraphviz through the `all` extra; without it they fail, not skip), and a
# system `dot` where there is one.
ENGINES = ["bundled", *(["system"] if shutil.which("dot") else [])]
BUNDLED = f"graphviz bundled with pygraphviz {version('pygraphviz')}"


def drawn_nodes(svg: bytes) -> set[str]:
    """The nodes Graphviz drew: each node's <title> in the SVG."""
    return {html.unescape(t) for t in re.findall(
        r'<g id="node\d+" class="node">\s*<title>([^<]*)</title>', svg.decode())}


@pytest.fixture
def only_engine(monkeypatch, tmp_path):
    """Leaves one engine installed, as on a machine with only that one: `dot` hidden
    from PATH for the bundled engine, pygraphviz for the system's."""
    def leave(engine: str) -> None:
        if engine == "bundled":
            monkeypatch.setenv("PATH", path_without_dot(tmp_path / "no_dot"))
        else:
            monkeypatch.setattr(diagram, "bundled_location", lambda: None)
        assert diagram.available() == [engine]
    return leave


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
        module = model.to_torch().eval()  # batch norm of a 1 x 1 map at batch 1 (aux heads)
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
    assert '"layer1.bottleneck2" [label="bottleneck(64, 1, 4, 1, 64, 1) × 2"' in text
    assert '"layer3.bottleneck2" [label="bottleneck(256, 1, 4, 1, 64, 1) × 5"' in text
    assert "layer1.bottleneck3" not in text  # folded into the run
    nodes, edges = parse_dot(text)
    assert edges[("layer1.bottleneck2", "layer2.bottleneck1")] == "256×56×56"
    top = to_dot(model.ir, depth=0)
    assert '"layer4" [label="layer4: bottleneck_stage(512, 3, 2, 1, 64, 1)"' in top


def test_options_direction_shapes_and_params():
    ir = cnndsl.load(SPECS / "lenet5.cnn").ir
    text = to_dot(ir, direction="LR", shapes=False, params=True)
    assert "rankdir=LR" in text and "label=\" 6×28×28\"" not in text
    assert '"c1" [label="c1: conv 5x5, 6\\n156 params"' in text


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("fmt", ["svg", "png", "pdf"])
def test_real_renders(tmp_path, fmt, engine):
    out = tmp_path / f"googlenet.{fmt}"
    result = run_cli("render", "specs/googlenet.cnn", "-o", str(out), "--engine", engine)
    assert result.returncode == 0, result.stderr
    said = BUNDLED if engine == "bundled" else "graphviz's " + shutil.which("dot")
    assert result.stderr == f"wrote {out} (drawn by {said})\n"
    data = out.read_bytes()
    magic = {"svg": b"<?xml", "png": b"\x89PNG", "pdf": b"%PDF"}[fmt]
    assert data.startswith(magic) and len(data) > 10_000
    if fmt == "svg":
        assert b"inception3a: inception(64, 96, 128, 16, 32, 32, 3)" in data
        nodes, _ = parse_dot(to_dot(cnndsl.load(SPECS / "googlenet.cnn").ir))
        assert drawn_nodes(data) == nodes | {"legend"}


@pytest.mark.parametrize("engine", ENGINES)
def test_every_layer_is_drawn(engine):
    text = to_dot(cnndsl.load(SPECS / "resnet18.cnn").ir, depth=99)
    nodes, edges = parse_dot(text)
    svg = diagram.render(text, "svg", engine).data
    assert drawn_nodes(svg) == nodes | {"legend"} and len(nodes) > 60
    assert svg.count(b'class="edge"') == len(edges)


def test_without_dot_the_bundled_engine_draws(tmp_path):
    """A machine with no graphviz but what pip installed: the bundled engine draws, and
    asking for the system's says what is missing, writing the .dot instead."""
    env = {"PATH": path_without_dot(tmp_path / "bin")}
    out = tmp_path / "lenet.svg"
    result = run_cli("render", "specs/lenet5.cnn", "-o", str(out), env=env)
    assert result.returncode == 0 and result.stderr == f"wrote {out} (drawn by {BUNDLED})\n"
    assert out.read_bytes().startswith(b"<?xml") and b"conv 5x5, 6" in out.read_bytes()
    as_json = run_cli("render", "specs/lenet5.cnn", "-o", str(out), "--json", env=env)
    assert json.loads(as_json.stdout) == {"ok": True, "output": str(out), "format": "svg",
                                          "engine": "bundled"}
    asked = run_cli("render", "specs/lenet5.cnn", "-o", str(tmp_path / "l.png"),
                    "--engine", "system", env=env)
    assert asked.returncode == 1 and "Traceback" not in asked.stderr
    assert "the system engine needs graphviz's `dot` on PATH: apt-get install graphviz" \
        in asked.stderr
    assert (tmp_path / "l.dot").read_text().startswith('digraph "lenet5"')
    assert not (tmp_path / "l.png").exists()


def test_without_any_graphviz_the_dot_file_is_written_and_install_is_explained(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", path_without_dot(tmp_path / "bin"))
    monkeypatch.setattr(diagram, "bundled_location", lambda: None)
    status = main(["render", str(SPECS / "lenet5.cnn"), "-o", str(tmp_path / "lenet.png")])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert "no Graphviz to draw with: pip install pygraphviz" in err
    assert "apt-get install graphviz" in err
    assert (tmp_path / "lenet.dot").read_text().startswith('digraph "lenet5"')
    assert not (tmp_path / "lenet.png").exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_notebook_shows_the_diagram_and_summary(engine, only_engine):
    only_engine(engine)
    model = cnndsl.load(SPECS / "lenet5.cnn")
    svg = model._repr_svg_()
    assert svg.lstrip().startswith("<?xml") and "conv 5x5, 6" in svg
    html_text = model._repr_html_()
    assert "<svg" in html_text and "61,706" in html_text


def test_the_api_renders_through_either_engine(tmp_path, only_engine):
    model = cnndsl.load(SPECS / "lenet5.cnn")
    only_engine("bundled")
    assert model.render(tmp_path / "a.pdf") == tmp_path / "a.pdf"
    assert (tmp_path / "a.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(diagram.DotMissingError, match="the system engine needs graphviz's"):
        model.render(tmp_path / "b.svg", engine="system")
    assert (tmp_path / "b.dot").exists() and not (tmp_path / "b.svg").exists()


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


@pytest.mark.parametrize("engine", ENGINES)
def test_a_flat_network_of_40000_layers_renders(tmp_path, engine):
    """graphviz segfaulted on 40,000 nodes in a row: the middle of a level is one node."""
    model = cnndsl.loads("network flat() {\n    input x: 1 x 4 x 4\n"
                         + "    relu\n" * 40_000 + "}\n")
    dot_text = model.to_dot()
    nodes, edges = parse_dot(dot_text)
    assert len(nodes) < 1_000 and "… 39,600 more layers …" in dot_text
    out = tmp_path / "flat.svg"
    model.render(out, engine=engine)
    svg = out.read_bytes()
    assert svg.lstrip().startswith(b"<?xml") and drawn_nodes(svg) == nodes | {"legend"}
    assert "… 39,600 more layers …".encode() in svg


def fake_engine(tmp_path, monkeypatch, engine: str, body: str) -> None:
    """`engine` replaced by a program that does `body` (sh for dot, Python for the child)."""
    if engine == "system":
        fake = tmp_path / "dot"
        fake.write_text("#!/bin/sh\n" + body + "\n")
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    else:
        fake = tmp_path / "child.py"
        fake.write_text(body + "\n")
        monkeypatch.setattr(diagram, "CHILD", fake)


CRASH = {"system": "kill -SEGV $$", "bundled": "import os, signal\nos.kill(os.getpid(), "
         "signal.SIGSEGV)"}
HANG = {"system": "exec sleep 60", "bundled": "import time\ntime.sleep(60)"}
PROGRAM = {"system": r"graphviz's \S*dot", "bundled": re.escape(BUNDLED)}


@pytest.mark.parametrize("engine", ["system", "bundled"])
def test_a_crash_of_the_engine_is_an_error_not_a_dead_process(tmp_path, monkeypatch, engine):
    fake_engine(tmp_path, monkeypatch, engine, CRASH[engine])
    with pytest.raises(RuntimeError, match=PROGRAM[engine] + r" failed \(signal SIGSEGV\): "
                                           r"it printed nothing"):
        diagram.render('digraph "g" { a -> b }', "svg", engine)


@pytest.mark.parametrize("engine", ["system", "bundled"])
def test_a_layout_past_the_time_bound_is_stopped(tmp_path, monkeypatch, engine):
    fake_engine(tmp_path, monkeypatch, engine, HANG[engine])
    monkeypatch.setattr(diagram, "LAYOUT_TIMEOUT_S", 1)
    with pytest.raises(RuntimeError, match=PROGRAM[engine] + " did not finish the layout in "
                                           "1 s and was stopped; --depth folds blocks"):
        diagram.render('digraph "g" { a -> b }', "svg", engine)


def test_a_failing_dot_is_reported_with_what_it_said(tmp_path, monkeypatch):
    fake_engine(tmp_path, monkeypatch, "system",
                "echo 'syntax error in line 1' >&2\nexit 3")
    with pytest.raises(RuntimeError, match=r"\(exit status 3\): syntax error in line 1"):
        diagram.render("digraph {", "svg", "system")
    with pytest.raises(RuntimeError, match=re.escape(BUNDLED) + r" failed \(exit status 1\): "
                                           "Error: syntax error in line"):
        diagram.render("digraph {", "svg", "bundled")  # the real one


def test_a_crash_while_rendering_is_located_and_leaves_the_old_file(tmp_path, monkeypatch,
                                                                    capsys):
    fake_engine(tmp_path, monkeypatch, "bundled", CRASH["bundled"])
    out = tmp_path / "lenet.svg"
    out.write_text("the drawing from before")
    status = main(["render", str(SPECS / "lenet5.cnn"), "-o", str(out), "--engine", "bundled"])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err and "internal error" not in err
    assert f"error[E-io]: cannot draw {out}: {BUNDLED} failed (signal SIGSEGV)" in err
    assert "lenet5.cnn:4:9\n" in err
    assert "4 | network lenet5(classes: int = 10) {\n  |         ^^^^^^ this network" in err
    assert out.read_text() == "the drawing from before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py", "lenet.svg"]
