"""A seeded fuzz campaign through `fmt` and `check`: mutants of the repository's specs (and
of the standard library's), made with tools/fuzz.py's mutations and with the ones that hit
the formatter (comments, `# fmt: off`/`on`, line breaks next to `->`, `;`, form feeds
and other characters Python calls line breaks). The promise for each: it formats with
its meaning kept (`check --json` equal, positions aside; formatting again changes
nothing), or it gets a located error; never an internal error.

CNNDSL_FUZZ_CASES sets the number of cases (default 400, about 30 s here; a long run:
CNNDSL_FUZZ_CASES=20000)."""

from __future__ import annotations

import os
import random
import sys

from test_fmt import _without_positions

import cnndsl
from cnndsl.fmt import FormatError, format_text
from cnndsl.report import to_json
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import fuzz  # noqa: E402

CASES = int(os.environ.get("CNNDSL_FUZZ_CASES", "400"))
SEED = 28

FMT_PIECES = ["# a note", "# fmt: off", "# fmt: on", "#", "#fmt:off", "# fmt: on  ", "->",
              ";", "\n", "\n\n", "\f", "\v", "\x1c", "\x85", "\u2028", "\ufeff", "\r\n",
              "\r", "\t", "  ", "\\\n", "(", ")", ","]


def fmt_mutate(text: str, rng: random.Random) -> str:
    """Mutations aimed at the formatter: comments and `fmt: off` regions anywhere, line
    breaks moved next to `->` and inside brackets, odd whitespace."""
    lines = text.split("\n")
    kind = rng.randrange(7)
    i = rng.randrange(len(lines))
    if kind == 0:  # a comment line, indented anyhow
        lines.insert(i, " " * rng.randrange(9) + rng.choice(FMT_PIECES[:6]))
    elif kind == 1:  # a trailing comment
        lines[i] += "  " + rng.choice(FMT_PIECES[:6])
    elif kind == 2:  # a `fmt: off` region over a few lines (maybe never closed)
        j = min(len(lines), i + rng.randrange(1, 6))
        if rng.random() < 0.8:
            lines.insert(j, "    # fmt: on")
        lines.insert(i, "    # fmt: off")
    elif kind == 3:  # a line break before or after an `->`
        joined = "\n".join(lines)
        arrows = [k for k in range(len(joined)) if joined.startswith("->", k)]
        if arrows:
            k = rng.choice(arrows)
            cut = k if rng.random() < 0.5 else k + 2
            piece = "\n" + " " * rng.randrange(12) + ("# between\n" if rng.random() < 0.3
                                                     else "")
            after = "  # after the arrow\n" if cut == k and rng.random() < 0.5 else ""
            return joined[:cut] + piece + joined[cut:k + 2] + after + joined[k + 2:]
    elif kind == 5:  # cut short, odd characters at the end (a syntax error at the end)
        joined = "\n".join(lines)
        return joined[:rng.randrange(len(joined) + 1)] + "".join(
            rng.choice(FMT_PIECES[9:]) for _ in range(rng.randrange(1, 4)))
    else:  # a piece anywhere
        joined = "\n".join(lines)
        k = rng.randrange(len(joined) + 1)
        return joined[:k] + rng.choice(FMT_PIECES) + joined[k:]
    return "\n".join(lines)


def mutants(count: int, seed: int):
    rng = random.Random(seed)
    texts = fuzz.corpus()
    for _ in range(count):
        text = rng.choice(texts)
        for _ in range(rng.randrange(1, 4)):
            text = fmt_mutate(text, rng) if rng.random() < 0.6 else fuzz.mutate(text, rng)
        yield text


def meaning(text: str) -> dict:
    """What `check --json` says of a text, positions aside."""
    try:
        result = {"ok": True, **to_json(cnndsl.loads(text, name="case.cnn",
                                                     imports_from=ROOT / "specs").ir)}
    except cnndsl.CnnError as exc:
        result = {"ok": False, "errors": [d.to_json() for d in exc.diagnostics
                                          if d.severity == "error"]}
    return _without_positions(result)


def test_mutants_format_with_their_meaning_kept_or_a_located_error():
    outcomes = {"formatted": 0, "located error": 0}
    for case, text in enumerate(mutants(CASES, SEED)):
        try:
            formatted = format_text(text, name="case.cnn")
        except cnndsl.CnnError as exc:
            assert exc.diagnostics, (case, text)
            for d in exc.diagnostics:
                assert d.span is not None and d.span.file == "case.cnn", (case, text, d)
                lines = cnndsl.syntax.normalise(text).split("\n")
                assert 1 <= d.span.line <= len(lines), (case, text, d)
                assert d.code != "internal-error"
            exc.render()  # and it renders
            outcomes["located error"] += 1
            continue
        except FormatError as exc:  # pragma: no cover - the finding this test is for
            raise AssertionError(f"case {case}: internal error {exc}\n{text!r}") from None
        assert format_text(formatted, name="case.cnn") == formatted, (case, text)
        assert meaning(formatted) == meaning(text), (case, text)
        outcomes["formatted"] += 1
    assert sum(outcomes.values()) == CASES
    if CASES >= 200:  # the campaign means something: both outcomes, many times
        assert min(outcomes.values()) >= CASES // 10, outcomes
