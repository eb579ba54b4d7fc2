"""Structure found in a flat list of layers, for a spec a person reads:

- `fold_joins`: an add (concat) whose two inputs are paths from one tensor that nothing
  else reads becomes one step, `residual { } [shortcut { }]` (`branch concat { }`);
- `find_blocks`: windows of steps that recur along the main chain, equal but for their
  channels, strides and groups, become a `block` with those as parameters (greedy: the
  window saving most lines first), and consecutive equal calls become `* n`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .recognise import Layer

ABSTRACT = {"conv": ("0", "stride", "groups"), "conv_transpose": ("0", "stride", "groups"),
            "linear": ("0",), "squeeze_excite": ("0",)}
MAX_WINDOW = 16


def fold_joins(layers: list[Layer], outputs: list[str]) -> list[Layer]:
    layers = list(layers)
    # a layer whose weights another layer reads too stays in a chain, where shared.py
    # writes it as a module applied again
    seen: dict[tuple, int] = {}
    for layer in layers:
        if layer.tensors:
            seen[layer.tensors] = seen.get(layer.tensors, 0) + 1
    shared = {k for k, n in seen.items() if n > 1}
    changed = True
    while changed:
        changed = False
        made = {layer.output: layer for layer in layers}
        readers: dict[str, int] = {o: 1 for o in outputs}
        for layer in layers:
            for x in layer.inputs:
                readers[x] = readers.get(x, 0) + 1
        for k, join in enumerate(layers):
            if join.op not in ("add", "concat") or len(join.inputs) != 2 or join.kwargs:
                continue
            (sa, pa), (sb, pb) = (_path_back(x, made, readers) for x in join.inputs)
            if sa != sb or readers.get(sa, 0) != 2 or not (pa or pb) or any(
                    layer.tensors in shared for layer in pa + pb):
                continue
            folded = _compound(join, sa, pa, pb)
            gone = {id(layer) for layer in pa + pb}
            layers[k] = folded
            layers = [layer for layer in layers if id(layer) not in gone]
            changed = True
            break
    return layers


GATE_ACTS = {"relu", "relu6", "silu", "gelu", "hardswish", "leaky_relu", "elu", "tanh"}


def fold_gates(layers: list[Layer], outputs: list[str]) -> list[Layer]:
    """`mul(x, x -> global_avgpool -> conv(s, 1) -> act -> conv(c, 1) -> gate)`, the gate
    read by that product alone: the standard library's `squeeze_excite(s, act=, gate=)`,
    one step of x's chain (so that the block around it can be a residual, a block)."""
    made = {layer.output: layer for layer in layers}
    readers: dict[str, int] = {o: 1 for o in outputs}
    for layer in layers:
        for x in layer.inputs:
            readers[x] = readers.get(x, 0) + 1
    gone: set[int] = set()
    out = []
    for layer in layers:
        gate = _gate(layer, made, readers)
        if gate is None:
            out.append(layer)
            continue
        path, args, kwargs = gate
        gone.update(id(step) for step in path)
        out.append(Layer("squeeze_excite", args, kwargs, [layer.inputs[0]], layer.output,
                         layer.source, inner=[*path, layer]))
    return [layer for layer in out if id(layer) not in gone]


def _gate(mul: Layer, made, readers):
    if mul.op != "mul" or len(mul.inputs) != 2 or mul.args or mul.kwargs:
        return None
    x, gates = mul.inputs
    source, path = _path_back(gates, made, readers)
    if source != x or readers.get(x, 0) != 2 or [s.op for s in path[:2]] != [
            "global_avgpool", "conv"] or len(path) != 5:
        return None
    pool, squeeze, act, expand, gate = path
    plain = all(c.args[1:] == ["1"] and not c.kwargs for c in (squeeze, expand))
    if not plain or act.op not in GATE_ACTS or act.kwargs or gate.op not in (
            "sigmoid", "hardsigmoid") or expand.op != "conv":
        return None
    kwargs = {}
    if act.op != "silu":
        kwargs["act"] = act.op
    if gate.op != "sigmoid":
        kwargs["gate"] = gate.op
    return path, [squeeze.args[0]], kwargs


def _path_back(x: str, made, readers) -> tuple[str, list[Layer]]:
    path: list[Layer] = []
    while x in made and readers.get(x, 0) == 1 and len(made[x].inputs) == 1:
        path.insert(0, made[x])
        x = made[x].inputs[0]
    return x, path


def _compound(join: Layer, source: str, pa: list[Layer], pb: list[Layer]) -> Layer:
    if join.op == "add":
        body, shortcut = (pa, pb) if len(pa) >= len(pb) else (pb, pa)
        parts = [body, shortcut] if shortcut else [body]
        return Layer("residual", [], {}, [source], join.output, join.source, parts=parts,
                     implicit_shortcut=_is_projection(shortcut))
    paths = [p or [Layer("identity", [], {}, [source], source, join.source)] for p in (pa, pb)]
    return Layer("branch", [], {}, [source], join.output, join.source, parts=paths)


def _is_projection(shortcut: list[Layer]) -> bool:
    """The shortcut `residual { }` adds by itself where the shapes differ: 1x1 conv
    without bias (stride 1 or 2: the smallest that matches), then a default batch norm.
    Written out, its stride-2 1x1 conv on an even size would warn of unread rows."""
    if len(shortcut) != 2:
        return False
    conv, norm = shortcut
    return (conv.op == "conv" and conv.args[1:] == ["1"] and norm.op == "batchnorm"
            and not norm.kwargs and set(conv.kwargs) <= {"stride", "bias"}
            and conv.kwargs.get("bias") == "false" and conv.kwargs.get("stride", "1") in
            ("1", "2"))


@dataclass
class Block:
    name: str
    params: list[str]
    steps: list[Layer]            # the first use's steps, its arguments as parameters
    template: tuple = ()
    uses: list[list] = field(default_factory=list)


def signature(step: Layer) -> tuple[str, list[str]]:
    """(the step with its channels, strides and groups as holes, the values in them)"""
    if step.parts:
        values: list[str] = []
        inner = []
        for part in step.parts:
            for s in part:
                t, v = signature(s)
                inner.append(t)
                values += v
        return f"{step.op}[{'|'.join(inner)}]", values
    holes = ABSTRACT.get(step.op, ())
    args = ["{}" if "0" in holes and i == 0 else a for i, a in enumerate(step.args)]
    values = [step.args[0]] if "0" in holes and step.args else []
    kw = []
    for key in ("stride", "groups"):
        if key in holes:
            values.append(step.kwargs.get(key, "1"))
    for key, value in step.kwargs.items():
        kw.append(f"{key}={'{}' if key in holes else value}")
    for key in ("stride", "groups"):
        if key in holes and key not in step.kwargs:
            kw.append(f"{key}={{}}")
    return f"{step.op}({','.join(args + sorted(kw))})", values


def _lines(step: Layer) -> int:
    """The lines a step takes when written out (a compound's braces included)."""
    if step.parts:
        from .writer import Names, _compound_lines
        return len(_compound_lines(step, 0, Names(), False))
    return 1 if step.op in ("conv", "conv_transpose", "linear", "maxpool", "avgpool") else 0


def _boundary(before: Layer | None, after: Layer | None) -> bool:
    """Where a block may begin or end: not before an activation, and never between a
    conv and its batch norm."""
    if before is None or after is None or after.parts:
        return True
    if after.op == "batchnorm" and not before.parts:
        return before.op not in ("conv", "conv_transpose", "linear")
    return after.op not in _ACTIVATIONS


_ACTIVATIONS = frozenset({"relu", "relu6", "silu", "gelu", "hardswish", "hardsigmoid",
                          "sigmoid", "tanh", "leaky_relu", "elu", "softmax", "log_softmax"})


def find_blocks(steps: list[Layer], names) -> tuple[list[Block], list[Layer]]:
    blocks: list[Block] = []
    while True:
        best = _best_window(steps)
        if best is None:
            break
        length, starts = best
        block = _make_block(steps, length, starts, names)
        blocks.append(block)
        out, i, k = [], 0, 0
        while i < len(steps):
            if k < len(starts) and i == starts[k]:
                out.append(Layer(block.name, block.uses[k], {}, [steps[i].inputs[0]],
                                 steps[i + length - 1].output, steps[i].source,
                                 parts=[steps[i:i + length]], block=block))
                i += length
                k += 1
            else:
                out.append(steps[i])
                i += 1
        steps = out
    return blocks, _repeats(steps)


def _best_window(steps: list[Layer]):
    """The window of steps whose block saves the most lines per step it holds."""
    sigs = [None if s.block else signature(s)[0] for s in steps]
    cost = [_lines(s) for s in steps]
    edge = [_boundary(steps[i - 1] if i else None, steps[i] if i < len(steps) else None)
            for i in range(len(steps) + 1)]
    best, best_rate = None, 0.0
    for length in range(1, min(MAX_WINDOW, len(steps) // 2) + 1):
        seen: dict[tuple, list[int]] = {}
        for i in range(len(steps) - length + 1):
            key = tuple(sigs[i:i + length])
            if None in key or not (edge[i] and edge[i + length]):
                continue
            found = seen.setdefault(key, [])
            if not found or found[-1] + length <= i:
                found.append(i)
        for starts in seen.values():
            if len(starts) < 2:
                continue
            first = starts[0]
            if not sum(cost[first:first + length]):
                continue  # its calls would take the lines its steps take
            size = sum(cost[first:first + length]) + (cost[first] == 0)
            saving = size * len(starts) - (size + 2) - -(-len(starts) // 3)
            if saving > 2 and saving / length > best_rate:
                best, best_rate = (length, starts), saving / length
    return best


def _make_block(steps, length, starts, names) -> Block:
    uses = [[v for s in steps[i:i + length] for v in signature(s)[1]] for i in starts]
    holes = len(uses[0])
    varying = [h for h in range(holes) if len({u[h] for u in uses}) > 1]
    # a hole always equal to an earlier varying one shares its parameter (groups = c)
    param_of: dict[int, int] = {}
    params: list[int] = []
    for h in varying:
        same = next((p for p in params if all(u[p] == u[h] for u in uses)), None)
        if same is None:
            params.append(h)
            param_of[h] = h
        else:
            param_of[h] = same
    kinds = _hole_kinds(steps[starts[0]:starts[0] + length])
    pnames: dict[int, str] = {}
    for h in params:
        base = {"0": "c", "stride": "stride", "groups": "groups"}[kinds[h]]
        n = sum(1 for v in pnames.values() if v.rstrip("0123456789") == base)
        pnames[h] = base if n == 0 else f"{base}{n + 1}"
    fill = [pnames[param_of[h]] if h in param_of else uses[0][h] for h in range(holes)]
    template = _filled(steps[starts[0]:starts[0] + length], iter(fill))
    name = names.identifier(_block_name(template), "block", "block")
    return Block(name, [pnames[h] for h in params], template,
                 uses=[[u[h] for h in params] for u in uses])


def _hole_kinds(steps) -> list[str]:
    kinds = []
    for s in steps:
        if s.parts:
            kinds += _hole_kinds([x for part in s.parts for x in part])
            continue
        holes = ABSTRACT.get(s.op, ())
        kinds += [h for h in ("0", "stride", "groups") if h in holes]
    return kinds


def _filled(steps, fill) -> list[Layer]:
    out = []
    for s in steps:
        if s.parts:
            parts = [_filled(part, fill) for part in s.parts]
            out.append(Layer(s.op, s.args, s.kwargs, s.inputs, s.output, s.source,
                             parts=parts, implicit_shortcut=s.implicit_shortcut))
            continue
        holes = ABSTRACT.get(s.op, ())
        args, kwargs = list(s.args), dict(s.kwargs)
        if "0" in holes:
            args[0] = next(fill)
        for key in ("stride", "groups"):
            if key in holes:
                value = next(fill)
                if value == "1":
                    kwargs.pop(key, None)
                else:
                    kwargs[key] = value
        kwargs = {**{k: kwargs[k] for k in _KW_ORDER if k in kwargs},
                  **{k: v for k, v in kwargs.items() if k not in _KW_ORDER}}
        out.append(Layer(s.op, args, kwargs, s.inputs, s.output, "", parts=[]))
    return out


_KW_ORDER = ("stride", "padding", "output_padding", "dilation", "groups", "bias")


def _block_name(steps: list[Layer]) -> str:
    if any(s.op == "residual" and len(s.parts) > 1 and not s.implicit_shortcut
           for s in steps):
        return "residual_projected"
    if any(s.op == "residual" for s in steps):
        inner = [x for s in steps for part in s.parts for x in part]
        return "residual_down" if any("stride" in x.kwargs for x in inner) else "residual_block"
    if any(s.op == "branch" for s in steps):
        return "dense_layer" if any(p[0].op == "identity" for s in steps if s.op == "branch"
                                    for p in s.parts) else "branch_block"
    ops = [s.op for s in steps if s.op in ("conv", "linear", "maxpool", "avgpool")]
    return "_".join(dict.fromkeys(ops)) + "_block" if ops else "unit"


def _repeats(steps: list[Layer]) -> list[Layer]:
    out: list[Layer] = []
    for s in steps:
        prev = out[-1] if out else None
        if (prev is not None and s.block is not None and prev.block is s.block
                and prev.args == s.args):
            prev.count += 1
            prev.parts = [prev.parts[0] + s.parts[0]]
            prev.output = s.output
        else:
            out.append(s)
    return out
