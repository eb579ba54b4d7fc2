"""Fuzzing cnndsl's front end and checker.

    python tools/fuzz.py [--cases N] [--seed S] [--time-bound SECONDS] [--save DIR]

Each case is a mutated or truncated zoo/stdlib spec, random bytes, deep nesting, a huge
number or stray unicode. The promise checked for every case: `cnndsl.load` either returns
a checked model (whose table, diagram and summary then render) or raises CnnError whose
every error carries a file, line and column -- never another exception, and never more
than the time bound. Failing cases are printed (and saved with --save) to become
regression tests.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cnndsl  # noqa: E402
from cnndsl.backends.diagram import to_dot  # noqa: E402
from cnndsl.report import layer_table, summary_table  # noqa: E402

INTERESTING_NUMBERS = ["0", "-1", "1", "3.5", "1e308", "99999999999999999999", "2 ** 62",
                       "1e-300", "-0", "65536", "(1 / 3)", "10000"]
WORDS = ["conv", "relu", "residual", "branch", "concat", "add", "mul", "input", "output",
         "network", "block", "import", "if", "and", "not", "same", "valid", "full", "true",
         "in_channels", "basic", "bottleneck", "x", "shortcut", "flatten", "linear", "->",
         "{", "}", "(", ")", ",", ":", "=", "*", "**", "//", ";", "\n", "#", '"', "x" * 300]
UNICODE = ["→", "×", "é", "\u200b", "\ufeff", "\u0000", "𝕩", "\t", "\r", "\x0c", "💥"]


def corpus() -> list[str]:
    texts = [p.read_text() for p in sorted((ROOT / "specs").glob("*.cnn"))]
    texts += [p.read_text() for p in sorted((ROOT / "cnndsl" / "stdlib").glob("*.cnn"))]
    return texts


def mutate(text: str, rng: random.Random) -> str:
    kind = rng.randrange(12)
    n = len(text)
    if kind == 0:  # truncate
        return text[:rng.randrange(n + 1)]
    if kind == 1:  # delete a span
        i = rng.randrange(n + 1)
        return text[:i] + text[i + rng.randrange(1, 40):]
    if kind == 2:  # duplicate or drop a line
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        if rng.random() < 0.5:
            lines.insert(i, lines[i])
        else:
            del lines[i]
        return "\n".join(lines)
    if kind == 3:  # swap two lines
        lines = text.split("\n")
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if kind == 4:  # replace a number
        numbers = list(re.finditer(r"\d+(\.\d+)?", text))
        if numbers:
            m = rng.choice(numbers)
            return text[:m.start()] + rng.choice(INTERESTING_NUMBERS) + text[m.end():]
    if kind == 5:  # replace a word
        words = list(re.finditer(r"[A-Za-z_]+", text))
        if words:
            m = rng.choice(words)
            return text[:m.start()] + rng.choice(WORDS) + text[m.end():]
    if kind == 6:  # insert tokens or unicode
        i = rng.randrange(n + 1)
        pool = WORDS if rng.random() < 0.7 else UNICODE
        return text[:i] + " ".join(rng.choice(pool) for _ in range(rng.randrange(1, 4))) + text[i:]
    if kind == 7:  # flip characters
        chars = list(text)
        for _ in range(rng.randrange(1, 6)):
            if chars:
                chars[rng.randrange(len(chars))] = chr(rng.randrange(32, 127))
        return "".join(chars)
    if kind == 8:  # huge repeat counts
        return re.sub(r"\* \(?[^\n)]*\)?", lambda m: f"* {rng.choice(['10000', '0', '-1', '1e9'])}",
                      text, count=1)
    if kind == 9:  # splice two places of the text
        i, j = sorted((rng.randrange(n + 1), rng.randrange(n + 1)))
        return text[:i] + text[j:] + text[i:j]
    return text


def generated(rng: random.Random) -> str:
    kind = rng.randrange(7)
    depth = rng.choice([10, 63, 64, 65, 100, 1000, 5000])
    body = "network n() {\n    input x: 3 x 16 x 16\n    %s\n}\n"
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200))).decode("latin-1")
    if kind == 1:
        return body % ("conv(" + "(" * depth + "4" + ")" * depth + ", 3)")
    if kind == 2:
        return body % ("residual {\n" * depth + "relu\n" + "}\n" * depth)
    if kind == 3:
        return body % ("linear(" + "-" * depth + "4)")
    if kind == 4:
        blocks = "\n".join(f"block b{i}() {{\n    b{i + 1}\n}}" for i in range(depth))
        return blocks + f"\nblock b{depth}() {{\n    relu\n}}\n" + body % "b0"
    if kind == 5:
        return body % f"conv({rng.choice(INTERESTING_NUMBERS)}, {rng.choice(INTERESTING_NUMBERS)})"
    return body % "".join(rng.choice(UNICODE + WORDS) for _ in range(rng.randrange(1, 30)))


class _TimeoutError(Exception):
    pass


def _alarm(signum, frame):
    raise _TimeoutError()


def check_case(text: str, time_bound: float) -> tuple[str, str | None]:
    """("checked" | "located error", None) when the promise holds; else ("failure", why)."""
    # the bound is on this process's CPU time: a loaded machine (the parallel test suite)
    # stretches wall-clock time, not the work a case costs
    signal.signal(signal.SIGPROF, _alarm)
    signal.setitimer(signal.ITIMER_PROF, time_bound)
    try:
        try:
            model = cnndsl.loads(text, name="fuzz.cnn")
            layer_table(model.ir), to_dot(model.ir), summary_table(model.ir)
        finally:  # before any handler runs: an alarm inside one would escape the campaign
            signal.setitimer(signal.ITIMER_PROF, 0)
    except cnndsl.CnnError as exc:
        unlocated = [d for d in exc.diagnostics if d.severity == "error" and d.span is None]
        if unlocated or not exc.diagnostics:
            why = unlocated[0].message if unlocated else "no diagnostics"
            return "failure", f"error without a location: {why}"
        exc.render()
        return "located error", None
    except _TimeoutError:
        return "failure", f"took more than {time_bound} s of CPU time"
    except Exception as exc:  # noqa: BLE001 - any other exception is a finding
        return "failure", f"crash: {type(exc).__name__}: {exc}"
    return "checked", None


def cases(count: int, seed: int):
    rng = random.Random(seed)
    texts = corpus()
    for _ in range(count):
        if rng.random() < 0.15:
            yield generated(rng)
        else:
            text = rng.choice(texts)
            for _ in range(rng.randrange(1, 4)):
                text = mutate(text, rng)
            yield text


def campaign(count: int, seed: int, time_bound: float, save: Path | None = None):
    outcomes: Counter = Counter()
    failures = []
    start = time.perf_counter()
    slowest = 0.0
    for i, text in enumerate(cases(count, seed)):
        case_start = time.process_time()
        outcome, problem = check_case(text, time_bound)
        outcomes[outcome] += 1
        if problem is not None:
            failures.append((i, problem, text))
            if save:
                save.mkdir(parents=True, exist_ok=True)
                (save / f"case_{seed}_{i}.cnn").write_text(text)
        slowest = max(slowest, time.process_time() - case_start)
    outcomes["slowest case (CPU ms)"] = round(1000 * slowest)
    return outcomes, failures, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-bound", type=float, default=10.0)
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    outcomes, failures, elapsed = campaign(args.cases, args.seed, args.time_bound, args.save)
    print(f"{args.cases} cases (seed {args.seed}) in {elapsed:.1f} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    for i, problem, text in failures[:20]:
        print(f"case {i}: {problem}\n    {text[:200]!r}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
