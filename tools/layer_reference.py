"""Writes the README's layer reference table from the registry (cnndsl/layers.py): every
kind's signature and doc line, in registry order.

    python tools/layer_reference.py           # rewrite the table in README.md
    python tools/layer_reference.py --check   # exit 1 if README.md is out of date
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnndsl.layers import REGISTRY  # noqa: E402

README = ROOT / "README.md"
TABLE = re.compile(r"(### Layer reference\n.*?\n)(\| layer \| what it does \|\n(?:\|[^\n]*\|\n)+)",
                   re.S)


def table() -> str:
    rows = [f"| `{kind.signature()}` | {kind.doc} |" for kind in REGISTRY.values()]
    return "\n".join(["| layer | what it does |", "|---|---|", *rows]) + "\n"


def updated(text: str) -> str:
    match = TABLE.search(text)
    if match is None:
        raise SystemExit("README.md has no layer reference table")
    return text[:match.start(2)] + table() + text[match.end(2):]


def main() -> int:
    text = README.read_text()
    if "--check" in sys.argv:
        return 0 if updated(text) == text else 1
    README.write_text(updated(text))
    print(f"wrote the layer reference ({len(REGISTRY)} layers) in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
