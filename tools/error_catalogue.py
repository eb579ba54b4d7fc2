"""Writes docs/errors.md from cnndsl/catalogue.py, running every example through the CLI.

    python tools/error_catalogue.py           # rewrite docs/errors.md
    python tools/error_catalogue.py --check   # exit 1 if docs/errors.md is out of date
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnndsl.catalogue import CATALOGUE, Entry  # noqa: E402
from cnndsl.cli import main  # noqa: E402

DOC = ROOT / "docs" / "errors.md"


def run_example(entry: Entry) -> tuple[int, str]:
    """Exit status and stderr of the example, run in a scratch directory."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            Path("example.cnn").write_text(entry.example)
            if entry.weights:
                import numpy as np
                from safetensors.numpy import save_file
                save_file({k: np.zeros(s, np.float32) for k, s in entry.weights.items()},
                          "w.safetensors")
            err = io.StringIO()
            env = dict(os.environ)
            os.environ["NO_COLOR"] = "1"
            os.environ["COLUMNS"] = "80"  # argparse wraps usage lines to the terminal
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                status = main(list(entry.argv))
            os.environ.clear()
            os.environ.update(env)
        finally:
            os.chdir(previous)
    text = re.sub(r"\(it has: [^)]*\)", "(it has: ...)", err.getvalue())  # machine-specific
    return status, text


def document() -> str:
    out = ["# Error catalogue", "",
           "Every diagnostic cnndsl reports, with a minimal example and the fix. Generated "
           "by `python tools/error_catalogue.py` from `cnndsl/catalogue.py`: each example "
           "below was run through the CLI and its output pasted as printed. "
           "`cnndsl explain CODE` prints an entry; `--json` gives the same diagnostics "
           "as objects.", ""]
    out += ["| code | meaning |", "|---|---|"]
    out += [f"| [`{e.code}`](#{e.code.lower()}) | {e.title} |" for e in CATALOGUE]
    for entry in CATALOGUE:
        status, printed = run_example(entry)
        out += ["", f"## {entry.code}", "", f"**{entry.title}.** {entry.explanation}", "",
                "```", "# example.cnn", entry.example.rstrip(), "```", "",
                f"`cnndsl {' '.join(entry.argv)}` (exit {status}):", "", "```",
                printed.rstrip(), "```", "", f"Fix: {entry.fix}"]
    return "\n".join(out) + "\n"


def main_() -> None:
    text = document()
    if "--check" in sys.argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python tools/error_catalogue.py", file=sys.stderr)
            sys.exit(1)
        return
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main_()
