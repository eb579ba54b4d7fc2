"""The README is executed: every fenced block is tagged, and every `cnn`, `console` and
`python` block runs and does what the text says (docs/errors.md is kept in step by
tests/test_catalogue.py, which runs its examples)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cnndsl
from conftest import ROOT, path_without_dot

DOCS = [ROOT / "README.md"]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)
KINDS = {"cnn", "console", "python", "sh", "text"}


def blocks(kind: str) -> list[tuple[str, str]]:
    """(id, text) of every block of one kind, the id naming its file and line."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            if m.group(1).strip() == kind:
                line = text.count("\n", 0, m.start()) + 1
                found.append((f"{doc.name}:{line}", m.group(2)))
    return found


def ids(items):
    return [i for i, _ in items]


def test_every_block_says_what_it_is():
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            assert m.group(1).strip() in KINDS, f"{doc.name}:{line}: tag the block ({KINDS})"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """A scratch folder that sees the repository's specs and examples: commands and
    snippets write their outputs here, never into the checkout. Its torch hub cache holds
    what `torchvision:resnet18` reads offline (randomly initialised weights)."""
    for name in ("specs", "examples", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


def seed_torch_hub(block: str) -> None:
    """torchvision's weights that a block names, in the cache (no download here)."""
    for name in sorted(set(re.findall(r"torchvision:(\w+)", block))):
        import torch
        import torchvision

        from cnndsl.transfer import _cache_file
        torch.manual_seed(0)
        path = _cache_file(torchvision.models.get_model_weights(name).DEFAULT.url)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.get_model(name, weights=None).state_dict(), path)


CNN_BLOCKS = blocks("cnn")


@pytest.mark.parametrize("block", [b for _, b in CNN_BLOCKS], ids=ids(CNN_BLOCKS))
def test_cnn_snippet_checks(block, tmp_path):
    """A `cnn` block is a whole file that checks clean, unless its first line says
    `# error: E-CODE`, in which case it fails with that code."""
    first = block.splitlines()[0]
    expected = re.match(r"#\s*error:\s*([EW]-\w+)", first)
    if expected:
        with pytest.raises(cnndsl.CnnError) as info:
            cnndsl.loads(block, strict=True)
        assert expected.group(1) in {d.code for d in info.value.diagnostics}
    else:
        model = cnndsl.loads(block, strict=True)
        assert model.params >= 0 and not model.warnings


def test_a_snippet_that_names_its_file_is_that_file():
    """`# specs/lenet5.cnn` over a snippet: the snippet is that file's network, verbatim."""
    for _, block in CNN_BLOCKS:
        named = re.match(r"# ((?:specs|examples)/[\w/]+\.cnn)\n", block)
        if named:
            assert block[named.end():] in (ROOT / named.group(1)).read_text()


CONSOLE_BLOCKS = blocks("console")


def run_shell(command: str, cwd: Path) -> str:
    words = shlex.split(command)
    assert words[0] == "cnndsl", f"console blocks run cnndsl, not {words[0]}"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}
    result = subprocess.run([sys.executable, "-m", "cnndsl", *words[1:]], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=300)  # one stream, in the order a terminal shows it
    return result.stdout.rstrip("\n")


DECIMAL = re.compile(r"\d+\.\d+")


def matches(actual: str, shown: str) -> bool:
    """The shown output, where a line `...` (maybe indented) stands for any lines, equals
    the actual one. A decimal figure may differ by one unit in its last digit: a trained
    network's outputs differ in the third decimal between CPUs (CI printed 0.022 where
    this machine prints 0.023); integers (parameter counts, shapes) match exactly."""
    parts = [p.strip("\n") for p in re.split(r"^[ \t]*\.\.\.$", shown, flags=re.M)]
    pattern = ".*".join(_pattern(p) for p in parts)
    match = re.fullmatch(pattern, actual, flags=re.S)
    if match is None:
        return False
    figures = [f for p in parts for f in DECIMAL.findall(p)]
    return all(abs(float(got) - float(want)) <= 1.01 * 10.0 ** -len(want.partition(".")[2])
               for got, want in zip(match.groups(), figures, strict=True))


def _pattern(text: str) -> str:
    """`text` as a regular expression in which each decimal figure is a group of the same
    number of decimals."""
    pieces = DECIMAL.split(text)
    figures = DECIMAL.findall(text)
    out = re.escape(pieces[0])
    for figure, piece in zip(figures, pieces[1:], strict=True):
        decimals = len(figure.partition(".")[2])
        out += rf"(-?\d+\.\d{{{decimals}}})" + re.escape(piece)
    return out


@pytest.mark.parametrize("block", [b for _, b in CONSOLE_BLOCKS], ids=ids(CONSOLE_BLOCKS))
def test_console_block_prints_what_it_shows(block, workdir):
    """`$ cnndsl ...` lines run; what follows each is its output (stdout and stderr)."""
    sessions = re.split(r"^\$ ", block, flags=re.M)[1:]
    assert sessions, "a console block starts with `$ cnndsl ...`"
    seed_torch_hub(block)
    for session in sessions:
        command, _, shown = session.partition("\n")
        actual = run_shell(command, workdir)
        assert matches(actual, shown.rstrip("\n")), f"$ {command}\n{actual}"


PYTHON_BLOCKS = blocks("python")


@pytest.mark.parametrize("block", [b for _, b in PYTHON_BLOCKS], ids=ids(PYTHON_BLOCKS))
def test_python_block_runs(block, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    seed_torch_hub(block)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102


def test_generated_source_snippet_is_what_compile_writes():
    """The README's `class Bottleneck` excerpt, `...` standing for omitted lines."""
    excerpt = next(b for _, b in blocks("text") if b.startswith("class Bottleneck("))
    source = cnndsl.load(ROOT / "specs" / "resnet50.cnn").to_torch_source()
    assert matches(source, "...\n" + excerpt.rstrip("\n") + "\n...")


def test_sh_blocks_name_real_make_targets():
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), re.M))
    for _, block in blocks("sh"):
        for command in re.findall(r"^make (\w+)", block, re.M):
            assert command in targets, command


def test_make_demo_runs(tmp_path):
    """The main job, as `make demo` runs it, with this interpreter's installation, on a
    machine with no graphviz but the one pip installed (a `dot` here is hidden from PATH):
    the diagram is drawn all the same, by the Graphviz bundled with pygraphviz."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "cnndsl").exists():
        pytest.skip("not running inside the project's virtual environment")
    out = tmp_path / "build"
    env = {**os.environ, "NO_COLOR": "1", "PATH": path_without_dot(tmp_path / "bin")}
    result = subprocess.run([shutil.which("make"), "-o", f"{venv}/.installed", "demo",
                             f"VENV={venv}", f"OUT={out}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "model.onnx").stat().st_size > 40_000_000  # resnet18's weights
    assert "class " in (out / "model.py").read_text()
    assert "images/s" in result.stdout + result.stderr
    assert "warning" not in result.stderr  # a stock ResNet-18 checks clean
    assert f"wrote {out}/model.svg (drawn by graphviz bundled with pygraphviz" in result.stderr
    svg = (out / "model.svg").read_text()
    assert svg.startswith("<?xml") and "layer4: basic_stage(512, 2, 2)" in svg
    assert not (out / "model.dot").exists()


def _zoo_rows():
    zoo = (ROOT / "README.md").read_text().split("## The model zoo", 1)[1].split("\n## ", 1)[0]
    for spec, options, params, macs in re.findall(
            r"^\| `(\w+\.cnn)((?: --set [^`]*)?)`[^|]*\| ([\d,]+) \| ([\d,]+) \|$", zoo, re.M):
        yield pytest.param(spec, options.replace(" --set ", "").split(),
                           int(params.replace(",", "")), int(macs.replace(",", "")), id=spec
                           + "".join("-" + o for o in options.split()[1:]))


ZOO_ROWS = list(_zoo_rows())


def test_the_zoo_table_lists_every_spec():
    assert {row.values[0] for row in ZOO_ROWS} == {p.name for p in (ROOT / "specs").glob("*.cnn")}


@pytest.mark.parametrize("spec, overrides, params, macs", ZOO_ROWS)
def test_zoo_table_figures_are_the_checkers(spec, overrides, params, macs):
    model = cnndsl.load(ROOT / "specs" / spec, **{
        k: float(v) if "." in v else int(v) for k, v in (o.split("=") for o in overrides)})
    assert (model.params, model.macs) == (params, macs)


def test_a_shown_figure_matches_within_one_unit_of_its_last_digit_and_no_more():
    assert matches("8 0.968, 6 0.022", "8 0.968, 6 0.023")
    assert matches("loss 1.5", "loss 1.4")
    assert not matches("8 0.968, 6 0.021", "8 0.968, 6 0.023")
    assert not matches("6 0.0225", "6 0.023")  # the number of decimals is part of the text
    assert not matches("12 parameters", "13 parameters")  # integers stay exact
    assert matches("a\nb 0.50\nc", "a\n...\nc")
