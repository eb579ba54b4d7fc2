"""Which names a spec may give, so that every back end can use them as they are.

Labels become attributes of PyTorch modules and keys of the state_dict; block and network
names become Python classes; parameters and tensors become Python variables in the
generated source. Rather than mangle a name differently in each back end (and break the
equality of state_dict names between them), a name that cannot be used as it is gets a
located error with a spelling that can. No torch import: the list of `nn.Module`'s own
attributes is kept here (tests/test_hostile_names.py compares it with torch's).
"""

from __future__ import annotations

import keyword

# nn.Module's public attributes (methods and `training`), and CnnModule's own
MODULE_ATTRIBUTES = frozenset({
    "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init",
    "children", "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr",
    "float", "forward", "get_buffer", "get_extra_state", "get_parameter", "get_submodule",
    "half", "ipu", "load_state_dict", "modules", "mtia", "named_buffers", "named_children",
    "named_modules", "named_parameters", "parameters", "register_backward_hook",
    "register_buffer", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_full_backward_pre_hook",
    "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook",
    "register_module", "register_parameter", "register_state_dict_post_hook",
    "register_state_dict_pre_hook", "requires_grad_", "set_extra_state", "set_submodule",
    "share_memory", "smart_apply", "state_dict", "to", "to_empty", "train", "training", "type",
    "xpu", "zero_grad",
    "network_name", "input_names", "output_names", "run_all",
})
# what generated code itself uses: parameters and tensors may not shadow these
GENERATED_NAMES = frozenset({"self", "super", "torch", "nn", "F", "math", "build",
                             "_divisible", "min", "max", "round", "abs", "int", "float",
                             "ceil", "floor", "divisible"})
# words of the language: a parameter of this name would change what the word means
LANGUAGE_WORDS = frozenset({"true", "false", "same", "valid", "full", "nearest", "bilinear",
                            "in_channels"})


def name_problem(name: str, role: str) -> tuple[str, str] | None:
    """(why, a usable spelling) if `name` cannot serve as a `role`: "label", "tensor",
    "parameter", "block" or "network"."""
    better = name.strip("_") + "_" if name.strip("_") else "name_"
    if keyword.iskeyword(name) or name in ("None", "True", "False"):
        return f"`{name}` is a Python keyword, which the generated PyTorch code cannot use", \
            better
    if name.startswith("__"):
        return f"`{name}` starts with `__`, which Python mangles inside classes", better
    if role == "label" and name.startswith("_"):
        return "a layer name may not start with `_` (PyTorch keeps its own state there)", \
            better
    if role == "label" and name in MODULE_ATTRIBUTES:
        return f"`{name}` is an attribute of every PyTorch module", f"{name}_"
    if role in ("parameter", "tensor") and name in GENERATED_NAMES:
        return f"`{name}` is a name the generated PyTorch code needs", f"{name}_"
    if role == "block" and name in _keywords():
        return f"`{name}` is a keyword of the language: a block of this name could not be " \
            "called", f"{name}_block"
    if role == "parameter" and name in LANGUAGE_WORDS:
        return f"`{name}` is a word of the language; a parameter would change its meaning", \
            f"{name}_"
    return None


def _keywords() -> frozenset[str]:
    from .syntax import keywords
    return keywords()
