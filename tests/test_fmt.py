"""`cnndsl fmt`: the canonical layout, comments kept, idempotent, meaning unchanged."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest

import cnndsl
from cnndsl import fmt, program, syntax
from cnndsl.fmt import FormatError, format_text
from cnndsl.report import to_json
from conftest import ROOT, run_cli

FORMATTED = ["specs", "cnndsl/stdlib", "examples"]  # the repository's own files
EVERY_CNN = sorted(p.relative_to(ROOT) for p in ROOT.rglob("*.cnn")
                   if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


def test_the_repository_is_formatted():
    result = run_cli("fmt", "--check", *FORMATTED)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^0 files would be reformatted, \d+ already formatted$", result.stderr,
                     re.M), result.stderr


# ---- exact layout rules -------------------------------------------------------------------


def test_spacing_by_token_kind():
    messy = ("network n( c:int=16 ,k : int=3)   {\n"
             "  input x :3x32 x32\n"
             "\tconv( c,k ,stride = 2,padding=-1+ 2 )->relu->  maxpool( 2 )*2\n"
             "  residual( project = false ){\n"
             "  conv(c, 3, padding=same)  if c!=16 and not(k==3)\n"
             "        }\n"
             "  y=x->conv(c*2,1);output   y\n"
             "}\n")
    assert format_text(messy) == (
        "network n(c: int = 16, k: int = 3) {\n"
        "    input x: 3 x 32 x 32\n"
        "    conv(c, k, stride=2, padding=-1 + 2) -> relu -> maxpool(2) * 2\n"
        "    residual(project=false) {\n"
        "        conv(c, 3, padding=same) if c != 16 and not (k == 3)\n"
        "    }\n"
        "    y = x -> conv(c * 2, 1)\n"  # a `;` ends a statement: one statement a line
        "    output y\n"
        "}\n")


def test_long_argument_lists_wrap_aligned_after_the_bracket():
    text = ("block b(first_parameter: int, second_parameter: int = 2, third_parameter: int = 3, "
            "fourth: int = 4) {\n"
            "    conv(first_parameter * second_parameter, third_parameter, stride=fourth, "
            "padding=(third_parameter - 1) // 2, groups=first_parameter, bias=false) -> relu\n"
            "}\n")
    out = format_text(text)
    assert out == (
        "block b(first_parameter: int, second_parameter: int = 2, third_parameter: int = 3,\n"
        "        fourth: int = 4) {\n"
        "    conv(first_parameter * second_parameter, third_parameter, stride=fourth,\n"
        "         padding=(third_parameter - 1) // 2, groups=first_parameter, bias=false) -> relu\n"
        "}\n")
    assert max(len(line) for line in out.splitlines()) <= fmt.WIDTH
    # and a wrapped list is re-filled when it fits again
    assert format_text("network n() {\n    conv(1,\n         2,\n 3)\n}\n") == \
        "network n() {\n    conv(1, 2, 3)\n}\n"


def test_long_chains_break_before_an_arrow():
    steps = " -> ".join(f"conv({i}, 3, padding=same)" for i in range(8, 14))
    out = format_text(f"network n() {{\n    input x: 3 x 8 x 8\n    y = x -> {steps}\n}}\n")
    assert out == (
        "network n() {\n"
        "    input x: 3 x 8 x 8\n"
        "    y = x -> conv(8, 3, padding=same) -> conv(9, 3, padding=same)"
        " -> conv(10, 3, padding=same)\n"
        "        -> conv(11, 3, padding=same) -> conv(12, 3, padding=same)"
        " -> conv(13, 3, padding=same)\n"
        "}\n")


def test_every_comment_is_kept_and_trailing_ones_align():
    text = ("# header\n\n\n"
            "network n() {   # the network\n\n"
            "    input x: 3 x 8 x 8 # the input\n"
            "    y = x -> conv(8,   # out channels\n"
            "        # a comment line inside the call\n"
            "        3) ->   # after an arrow\n"
            "        relu\n"
            "        # between continuation lines\n"
            "        -> maxpool(2)   # halves it\n"
            "# a comment at column one\n"
            "    output y\n\n"
            "}\n"
            "# the end\n")
    assert format_text(text) == (
        "# header\n"
        "\n"
        "network n() {           # the network\n"
        "    input x: 3 x 8 x 8  # the input\n"
        "    y = x -> conv(8,    # out channels\n"
        "                  # a comment line inside the call\n"
        "                  3)    # after an arrow\n"
        "        -> relu\n"
        "        # between continuation lines\n"
        "        -> maxpool(2)   # halves it\n"
        "    # a comment at column one\n"
        "    output y\n"
        "}\n"
        "# the end\n")


def test_fmt_off_keeps_a_region_as_written():
    table = ("    # fmt: off\n"
             "    conv(8,   3)      # aligned by hand\n"
             "    conv(16,  3)\n"
             "    # fmt: on\n")
    text = "network n() {\n    input x: 3 x 8 x 8\n" + table + "    relu  ->  flatten\n}\n"
    assert format_text(text) == ("network n() {\n    input x: 3 x 8 x 8\n" + table +
                                 "    relu -> flatten\n}\n")


def test_keywords_written_like_calls_come_from_the_grammar():
    assert fmt._attached_keywords() == {"_KW_RESIDUAL"}


def test_a_change_of_tokens_is_refused(monkeypatch):
    """The output is checked against the input: a formatter bug cannot change a file."""
    monkeypatch.setattr(fmt, "_space", lambda toks, i, tight: "")  # `network n` -> `networkn`
    with pytest.raises(FormatError):
        format_text("network n() {\n    input x: 3 x 8 x 8\n}\n")


# ---- round trip over every .cnn in the repository -----------------------------------------


def scramble(text: str, seed: int) -> str:
    """The same tokens with other whitespace: spaces added between tokens, line breaks
    inside brackets, random indentation, more blank lines where there was one. Whitespace
    is only ever added between tokens, so the lexer reads the same tokens."""
    rng = random.Random(seed)
    text = syntax.normalise(text)
    raw, _ = fmt._lex(text)
    toks = [t for t in raw if t.type != "_NL"]
    out, depth, pos = [], 0, 0
    for tok in toks:
        gap = text[pos:tok.start_pos]
        if "\n" in gap:
            gap = re.sub(r"\n[ \t]*", lambda m: "\n" + " " * rng.randrange(9), gap)
            gap = gap.replace("\n\n", "\n \n\t\n", 1)
        elif depth > 0 and "#" not in gap and rng.random() < 0.3:
            gap += "\n" + " " * rng.randrange(12)
        else:
            gap += " " * rng.randrange(3)
        out.append(gap + str(tok.value))
        depth += (tok.value == "(") - (tok.value == ")")
        pos = tok.end_pos
    return "".join(out) + text[pos:]


def checked(path: Path, root: Path = ROOT) -> dict:
    """What `cnndsl check --json` prints for a file, positions and file names aside."""
    try:
        result = {"ok": True, **to_json(cnndsl.load(path).ir)}
    except cnndsl.CnnError as exc:
        result = {"ok": False, "errors": [d.to_json() for d in exc.diagnostics]}
    return json.loads(json.dumps(_without_positions(result)).replace(str(root), "ROOT"))


def _without_positions(value):
    if isinstance(value, dict):
        return {k: _without_positions(v) for k, v in value.items()
                if k not in ("line", "column", "end_line", "end_column", "file")}
    if isinstance(value, list):
        return [_without_positions(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"(line |:)\d+(:\d+)?", r"\1N", value)
    return value


def test_round_trip_of_every_cnn_file(tmp_path):
    """Every .cnn of the repository: formatting is idempotent, a scrambled copy formats to
    the same text, and none of the three versions checks differently."""
    assert len(EVERY_CNN) >= 60
    formatted_count = 0
    for variant in ("original", "formatted", "scrambled", "scrambled-formatted"):
        shutil.copytree(ROOT, tmp_path / variant, ignore=_only_cnn)
    for i, rel in enumerate(EVERY_CNN):
        text = (ROOT / rel).read_text()
        try:
            formatted = format_text(text)
        except cnndsl.CnnError:
            assert rel.parts[:2] == ("tests", "broken"), rel  # only broken specs do not parse
            continue
        formatted_count += 1
        assert format_text(formatted) == formatted, f"{rel}: a second run changes it"
        mixed = scramble(text, seed=i)
        assert format_text(mixed) == formatted, f"{rel}: scrambled, it formats otherwise"
        (tmp_path / "formatted" / rel).write_text(formatted)
        (tmp_path / "scrambled" / rel).write_text(mixed)
        (tmp_path / "scrambled-formatted" / rel).write_text(format_text(mixed))
    assert formatted_count >= 56
    for rel in EVERY_CNN:
        if "stdlib" in rel.parts:
            continue  # checked through the zoo below
        results = {v: checked(tmp_path / v / rel, tmp_path / v) for v in ("original", "formatted",
                                                              "scrambled", "scrambled-formatted")}
        assert results["formatted"] == results["original"], rel
        assert results["scrambled"] == results["original"], rel
        assert results["scrambled-formatted"] == results["original"], rel


def test_the_zoo_checks_the_same_with_a_scrambled_stdlib(monkeypatch):
    """The standard library's blocks, laid out otherwise, give every zoo spec the same
    result; formatted back, they are the files as committed."""
    zoo = sorted((ROOT / "specs").glob("*.cnn"))
    expected = {p.name: checked(p) for p in zoo}
    assert sum(r["ok"] for r in expected.values()) == len(zoo)
    original = program._stdlib()
    library = tuple((name, scramble(text, i)) for i, (name, text, _) in enumerate(original))
    assert all(new != text for (_, new), (_, text, _) in zip(library, original))
    assert [format_text(new) for _, new in library] == [text for _, text, _ in original]
    parsed = tuple((name, text, syntax.parse(text, name)) for name, text in library)
    monkeypatch.setattr(program, "_stdlib", lambda: parsed)
    assert {p.name: checked(p) for p in zoo} == expected


def _only_cnn(folder: str, names: list[str]) -> list[str]:
    keep = {n for n in names if n.endswith(".cnn") or (Path(folder) / n).is_dir()}
    return [n for n in names if n not in keep or n.startswith(".") or n in (
        "__pycache__", "node_modules", "golden")]


# ---- the command ---------------------------------------------------------------------------


def test_fmt_rewrites_checks_and_diffs(tmp_path):
    path = tmp_path / "messy.cnn"
    messy = "network n(){\n  input x:3 x 8 x 8\n  conv(8,3)->relu\n}\n"
    path.write_text(messy)
    check = run_cli("fmt", "--check", str(path))
    assert check.returncode == 1 and f"would reformat {path}" in check.stderr
    diff = run_cli("fmt", "--diff", str(path))
    assert diff.returncode == 1
    assert "-  conv(8,3)->relu\n+network n() {\n+    input x: 3 x 8 x 8\n" \
        "+    conv(8, 3) -> relu\n }\n" in diff.stdout
    assert path.read_text() == messy  # --check and --diff change nothing
    done = run_cli("fmt", str(path))
    assert done.returncode == 0 and f"reformatted {path}" in done.stderr
    assert path.read_text() == format_text(messy)
    again = run_cli("fmt", "--check", str(path))
    assert again.returncode == 0 and "0 files would be reformatted, 1 already" in again.stderr


def test_fmt_of_a_file_that_does_not_parse_is_a_located_error(tmp_path):
    path = tmp_path / "broken.cnn"
    text = "network n() {\n    input x: 3 x 8 x 8\n    conv(8,, 3)\n}\n"
    path.write_text(text)
    before = path.stat().st_mtime_ns
    result = run_cli("fmt", str(path))
    assert result.returncode == 1
    assert "error[E-syntax]: expected" in result.stderr
    assert f"--> {path}:3:12" in result.stderr
    assert "    conv(8,, 3)" in result.stderr  # the line is quoted
    assert path.read_text() == text and path.stat().st_mtime_ns == before


def test_fmt_reads_standard_input():
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "cnndsl", "fmt", "-"], cwd=ROOT,
                            input="network n(){\n input x:1x2x2\n}", capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "network n() {\n    input x: 1 x 2 x 2\n}\n"


def test_check_json_is_unchanged_through_the_cli(tmp_path):
    """The issue's wording, once through the real commands: `check --json` before and after
    `fmt` of a scrambled ResNet-50 are equal, positions aside."""
    path = tmp_path / "resnet50.cnn"
    path.write_text(scramble((ROOT / "specs" / "resnet50.cnn").read_text(), seed=50))
    before = run_cli("check", "--json", str(path))
    assert run_cli("fmt", str(path)).returncode == 0
    after = run_cli("check", "--json", str(path))
    assert path.read_text() == (ROOT / "specs" / "resnet50.cnn").read_text()
    assert _without_positions(json.loads(before.stdout)) == \
        _without_positions(json.loads(after.stdout))
    assert json.loads(after.stdout)["params"] == 25_557_032


# ---- the command under hostile input --------------------------------------------------------


def _fmt_stdin(data: bytes, *args: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "cnndsl", "fmt", *args], cwd=ROOT,
                          input=data, capture_output=True, timeout=120,
                          env={**__import__("os").environ, "NO_COLOR": "1"})


def test_standard_input_is_decoded_exactly_as_a_file_is(tmp_path):
    """Bytes that are not UTF-8 were written back as `\\udcff\\udcfe`, exit 0."""
    data = b"network n() {\n    input x: 3 x 8 x 8  # \xff\xfe\n}\n"
    path = tmp_path / "latin.cnn"
    path.write_bytes(data)
    by_name = run_cli("fmt", str(path))
    piped = _fmt_stdin(data, "-")
    assert by_name.returncode == piped.returncode == 1
    assert piped.stdout == b""
    assert "not UTF-8 text: byte 0xff at offset 40" in by_name.stderr
    assert "not UTF-8 text: byte 0xff at offset 40" in piped.stderr.decode()
    assert "--> <stdin>:2:27" in piped.stderr.decode()
    assert path.read_bytes() == data
    # a BOM and CRLF line ends are read alike too
    crlf = b"\xef\xbb\xbfnetwork n(){\r\n input x:1x2x2\r\n}"
    assert _fmt_stdin(crlf, "-").stdout == b"network n() {\n    input x: 1 x 2 x 2\n}\n"


def test_standard_input_is_read_once():
    """`fmt - -` printed "0 files reformatted"."""
    result = _fmt_stdin(b"network n() {\n}\n", "-", "-")
    assert result.returncode == 1 and result.stdout == b""
    assert "standard input (`-`) can be given once" in result.stderr.decode()


def test_a_folder_run_goes_on_past_a_file_it_may_not_write(tmp_path):
    """Stopped at the first symbolic link or read-only file: later files never formatted,
    no summary."""
    messy = "network n(){\n  input x:3 x 8 x 8\n}\n"
    for name in ("a.cnn", "c_readonly.cnn", "d.cnn"):
        (tmp_path / name).write_text(messy)
    (tmp_path / "c_readonly.cnn").chmod(0o444)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "target.txt").write_text(messy)
    (tmp_path / "b_link.cnn").symlink_to(tmp_path / "elsewhere" / "target.txt")
    result = run_cli("fmt", str(tmp_path))
    assert result.returncode == 1
    assert (tmp_path / "a.cnn").read_text() == format_text(messy)
    assert (tmp_path / "d.cnn").read_text() == format_text(messy)  # after both refusals
    assert (tmp_path / "c_readonly.cnn").read_text() == messy
    assert (tmp_path / "elsewhere" / "target.txt").read_text() == messy
    assert (tmp_path / "b_link.cnn").is_symlink()
    assert f"error[E-io]: cannot write {tmp_path / 'b_link.cnn'}: a symbolic link" \
        in result.stderr
    assert f"error[E-io]: cannot write {tmp_path / 'c_readonly.cnn'}: read-only" \
        in result.stderr
    assert result.stderr.rstrip().endswith(
        "2 files reformatted, 0 already formatted, 2 not formatted (errors above)")


def test_a_comment_line_before_an_arrow_and_a_trailing_one_after_it():
    """Was refused as "formatting would change the file's tokens": the trailing comment
    was moved ahead of the comment line before it."""
    text = ("network n() {\n    input x: 3 x 8 x 8\n    conv(8, 3)\n    # before the arrow\n"
            "    -> # after the arrow\n    relu\n}\n")
    formatted = format_text(text)
    assert formatted == ("network n() {\n    input x: 3 x 8 x 8\n    conv(8, 3)\n"
                         "        # before the arrow\n        ->  # after the arrow\n"
                         "        relu\n}\n")
    assert format_text(formatted) == formatted


@pytest.mark.parametrize("statement", [
    # before a `->` continuation
    "    y = x -> conv(8,   3)\n    # fmt: off\n        ->   relu\n    # fmt: on\n",
    # inside ( )
    "    conv(8,\n    # fmt: off\n         3,   stride=1)\n    # fmt: on\n",
    # opened inside one statement, closed inside a later one
    "    conv(8,\n    # fmt: off\n         3)\n    relu   ->\n    # fmt: on\n      flatten\n",
])
def test_fmt_off_inside_a_statement_keeps_the_whole_statement(statement):
    """Was ignored: the comment became one of the statement's, and it was re-laid out."""
    text = "network n() {\n    input x: 3 x 8 x 8\n" + statement + "    relu  ->  relu\n}\n"
    assert format_text(text) == ("network n() {\n    input x: 3 x 8 x 8\n" + statement +
                                 "    relu -> relu\n}\n")


def _fmt_lines_run(text: str) -> int:
    """How many lines of cnndsl/fmt.py formatting `text` runs: a count of the work done,
    exact and the same on every machine, where a time would not be."""
    import sys
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != fmt.__file__:
            return None
        if event == "line":
            count += 1
        return tracer
    sys.settrace(tracer)
    try:
        format_text(text)
    finally:
        sys.settrace(None)
    return count


def test_fmt_off_regions_are_found_in_one_pass():
    """Each `# fmt: off` searched the file from its start for its `# fmt: on` (16k / 32k /
    64k pairs: 3.6 / 13.7 / 59 s). The work grows with the pairs, not with their square
    (benchmarks/fmt_off_scaling.py times it)."""
    pair = "    # fmt: off\n    relu  ->  relu\n    # fmt: on\n"

    def spec(pairs: int) -> str:
        return "network n() {\n    input x: 3 x 8 x 8\n" + pair * pairs + "}\n"
    assert format_text(spec(3)) == spec(3)
    small, large = _fmt_lines_run(spec(150)), _fmt_lines_run(spec(600))
    assert large / small < 4.5, (small, large)
