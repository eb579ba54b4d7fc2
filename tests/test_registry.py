"""Every layer kind has a handler in every back end; no silent gaps."""

from __future__ import annotations

import pytest

from cnndsl.backends.onnx_ops import ONNX_OPS
from cnndsl.backends.torch_ops import TORCH_OPS
from cnndsl.layers import REGISTRY

BACKENDS = {"torch": TORCH_OPS, "onnx": ONNX_OPS}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_layer_kind_has_a_handler(backend):
    missing = sorted(set(REGISTRY) - set(BACKENDS[backend]))
    assert not missing, f"{backend} back end lacks handlers for {missing}"
    extra = sorted(set(BACKENDS[backend]) - set(REGISTRY))
    assert not extra, f"{backend} back end handles unknown ops {extra}"


def test_every_layer_kind_is_documented():
    for op, kind in REGISTRY.items():
        assert kind.doc, f"{op} has no doc line"
        assert kind.family, f"{op} has no family"


def test_readme_layer_reference_lists_every_layer():
    from conftest import ROOT
    readme = (ROOT / "README.md").read_text()
    reference = readme.split("### Layer reference", 1)[1].split("\n## ", 1)[0]
    for op in REGISTRY:
        assert f"| `{op}" in reference, f"README's layer reference lacks {op}"
