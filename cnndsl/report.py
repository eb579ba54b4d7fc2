"""Tables and JSON for `cnndsl check` (and `summary`): one renderer for both."""

from __future__ import annotations

from .ir import Network, Node, ScopeTree, scope_tree
from .layers import REGISTRY, fmt

MACS_CONVENTION = "MACs count conv, transposed conv and linear multiply-accumulates only"


def human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def human_bytes(n: float) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:.0f} B"


def render_table(headers: list[str], rows: list[list[str] | str], right: set[int]) -> str:
    """Columns sized to the cells; a plain string row is a note printed as it is."""
    cells = [r for r in rows if not isinstance(r, str)]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]

    def line(row):
        if isinstance(row, str):
            return row
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def layer_rows(ir: Network) -> list[list[str] | str]:
    rows = [[i.name, "input", str(i.span.line), fmt(i.shape), "", ""] for i in ir.inputs]
    for n in ir.nodes:
        rows.append([n.name, n.op, str(n.span.line), fmt(n.shape),
                     f"{n.params:,}" if n.params else "", f"{n.macs:,}" if n.macs else ""])
        for arg, how in n.derivations.items():
            if how.count(" = ") > 1 or "(" in how.split(" = ")[0]:  # not a bare pass-through
                rows.append(f"    {arg} = {how}")
        if n.shares and REGISTRY[n.op].weights(n.attrs):  # a shared layer applied again
            rows.append(f"    weights of {n.shares}")
    return rows


def totals(ir: Network) -> list[str]:
    acts = ir.activations
    return [
        f"parameters  {ir.total_params:,} ({human_bytes(4 * ir.total_params)} as fp32)",
        f"MACs        {ir.total_macs:,} ({human(ir.total_macs)}) per image; {MACS_CONVENTION}",
        f"activations {acts:,} values per image ({human_bytes(4 * acts)} as fp32, every "
        "layer output kept: an upper-bound estimate)",
    ]


def layer_table(ir: Network) -> str:
    table = render_table(["layer", "op", "line", "output", "params", "MACs"], layer_rows(ir),
                         right={2, 4, 5})
    return f"network {ir.name} ({ir.file})\n{table}\n\n" + "\n".join(totals(ir)) + "\n"


def frozen_params(node: Node, frozen: set[str] = frozenset()) -> int:
    """A layer's parameters that training leaves as they are: all of a frozen layer's, or
    those the spec fixed (`trainable=false`)."""
    if node.name in frozen:
        return node.params
    if node.shares:
        return 0
    return sum(w.size for w in REGISTRY[node.op].weights(node.attrs)
               if not w.buffer and not w.trainable)


def to_json(ir: Network, frozen: set[str] = frozenset()) -> dict:
    """The check report; `frozen`: the layers training keeps frozen."""
    trainable = ir.total_params - sum(frozen_params(n, frozen) for n in ir.nodes)
    return {
        "network": ir.name,
        "file": ir.file,
        "network_params": ir.params,
        "inputs": [{"name": i.name, "shape": list(i.shape), "line": i.span.line}
                   for i in ir.inputs],
        "outputs": list(ir.outputs),
        "params": ir.total_params,
        "trainable_params": trainable,
        "frozen_params": ir.total_params - trainable,
        "macs": ir.total_macs,
        "activations": ir.activations,
        "layers": [{
            "name": n.name, "op": n.op, "line": n.span.line, "column": n.span.column,
            "inputs": list(n.inputs), "output_shape": list(n.shape), "params": n.params,
            "buffers": n.buffers, "macs": n.macs, "derivations": n.derivations,
            "frozen": n.name in frozen, **({"shares": n.shares} if n.shares else {}),
        } for n in ir.nodes],
        "warnings": [w.to_json() for w in ir.warnings],
        "conventions": {"macs": MACS_CONVENTION, "shapes": "per image, batch axis omitted"},
    }


# ---- summary: a torchinfo-like table from the static pass -----------------------------

ACTIVATION_CONVENTION = ("fp32, every layer output of one image counted once, inputs "
                         "included: an estimate (an upper bound for inference)")


def summary_rows(ir: Network, depth: int, frozen: set[str] = frozenset()) -> list[dict]:
    """One row per layer or block down to `depth`; deeper content is summed into its block.
    `frozen`: the layers training keeps frozen."""
    total = ir.total_params or 1
    rows: list[dict] = []

    def visit(tree: ScopeTree, level: int) -> None:
        for item in tree.items:
            if isinstance(item, Node):
                nodes, name, kind = [item], item.local, item.op
            else:
                nodes = item.nodes()
                name = item.local
                kind = item.scope.block if item.scope and item.scope.block else "sequence"
            if not nodes:
                continue
            params = sum(n.params for n in nodes)
            rows.append({"depth": level, "name": name, "path": ".".join(
                nodes[0].path[:level + 1]) if isinstance(item, ScopeTree) else item.name,
                "kind": kind, "output_shape": list(ir.shape_of(item.output)),
                "params": params, "buffers": sum(n.buffers for n in nodes),
                "frozen_params": sum(frozen_params(n, frozen) for n in nodes),
                "macs": sum(n.macs for n in nodes), "percent": 100 * params / total})
            if isinstance(item, ScopeTree) and level + 1 < depth:
                visit(item, level + 1)

    visit(scope_tree(ir), 0)
    return rows


def summary_totals(ir: Network, frozen: set[str] = frozenset()) -> dict:
    acts = ir.activations
    buffers = sum(n.buffers for n in ir.nodes)
    trainable = ir.total_params - sum(frozen_params(n, frozen) for n in ir.nodes)
    return {"params": ir.total_params, "trainable_params": trainable,
            "frozen_params": ir.total_params - trainable, "buffers": buffers,
            "macs": ir.total_macs,
            "param_bytes": 4 * ir.total_params, "buffer_bytes": 4 * buffers,
            "activation_values": acts, "activation_bytes": 4 * acts,
            "conventions": {"macs": MACS_CONVENTION, "activations": ACTIVATION_CONVENTION}}


def summary_table(ir: Network, depth: int = 3, frozen: set[str] = frozenset()) -> str:
    rows = summary_rows(ir, depth, frozen)
    table = render_table(
        ["layer (type)", "output", "params", "buffers", "MACs", "% params"],
        [["  " * r["depth"] + f"{r['name']} ({r['kind']})" + _frozen_mark(r),
          fmt(r["output_shape"]),
          f"{r['params']:,}" if r["params"] else "--", f"{r['buffers']:,}" if r["buffers"] else "",
          f"{r['macs']:,}" if r["macs"] else "", f"{r['percent']:.1f}%" if r["params"] else ""]
         for r in rows], right={2, 3, 4, 5})
    t = summary_totals(ir, frozen)
    lines = [
        f"network {ir.name} ({ir.file}); inputs "
        + ", ".join(f"{i.name}: {fmt(i.shape)}" for i in ir.inputs),
        table, "",
        f"parameters         {t['params']:,} (trainable {t['trainable_params']:,}, "
        f"frozen {t['frozen_params']:,})",
        f"buffers            {t['buffers']:,} (batch-norm running statistics; not parameters)",
        f"MACs               {t['macs']:,} ({human(t['macs'])}) per image; {MACS_CONVENTION}",
        f"parameter memory   {human_bytes(t['param_bytes'] + t['buffer_bytes'])} "
        "(fp32, parameters and buffers)",
        f"activation memory  {human_bytes(t['activation_bytes'])} per image "
        f"({ACTIVATION_CONVENTION})",
        "every figure comes from the static shape pass; nothing was run",
    ]
    return "\n".join(lines) + "\n"


def _frozen_mark(row: dict) -> str:
    if not row["frozen_params"]:
        return ""
    return " frozen" if row["frozen_params"] == row["params"] else " partly frozen"
