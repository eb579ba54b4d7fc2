"""docs/errors.md cannot drift: every code is catalogued, every example produces its code,
and the document is what the generator writes."""

from __future__ import annotations

import re
import sys

import pytest

from cnndsl.catalogue import BY_CODE, CATALOGUE
from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "tools"))
import error_catalogue  # noqa: E402


def codes_in_source() -> set[str]:
    found = set()
    for path in (ROOT / "cnndsl").rglob("*.py"):
        if path.name != "catalogue.py":
            found |= set(re.findall(r'"([EW]-[a-z]+)"', path.read_text()))
    return found


def test_every_code_in_the_source_is_catalogued():
    assert codes_in_source() == set(BY_CODE)


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda e: e.code)
def test_each_example_produces_its_code(entry):
    status, printed = error_catalogue.run_example(entry)
    severity = "warning" if entry.code.startswith("W-") and "--strict" not in entry.argv \
        else "error"
    assert f"{severity}[{entry.code}]" in printed
    assert status == (0 if severity == "warning" else 2 if entry.code == "E-usage" else 1)
    assert "Traceback" not in printed


def test_docs_errors_md_is_up_to_date():
    assert (ROOT / "docs" / "errors.md").read_text() == error_catalogue.document(), \
        "run python tools/error_catalogue.py"


def test_explain():
    result = run_cli("explain", "E-shape")
    assert result.returncode == 0 and result.stdout.startswith("E-shape: a layer that cannot")
    assert run_cli("explain", "E-nope").returncode == 2
