"""Diagram back end: the IR as a Graphviz DOT graph, drawn by the Graphviz bundled with
pygraphviz or by a system `dot` (`render(engine=...)`), in a child process either way.

- one node per layer, labelled with its op and key hyperparameters (`conv 3x3/2, 64`),
  coloured by layer family, with a legend;
- tensor shapes on the edges;
- block calls as labelled clusters; below `depth` a block folds into one node, and a run of
  identical folded calls into one node labelled `x N`;
- merges (add, mul, concat) are small nodes of their own, so shortcuts and branches show.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from ..ir import Network, Node, ScopeTree, scope_tree
from ..layers import REGISTRY, pair_text
from ..report import human

FAMILY_COLORS = {
    "conv": "#9cc9e8", "pool": "#ffd27a", "norm": "#b9e4c4", "activation": "#f6c1cb",
    "linear": "#d4c1e6", "reshape": "#e6e6e6", "dropout": "#eeeeee", "merge": "#ffffff",
    "block": "#fff3d6", "io": "#ffffff",
}
FAMILY_NAMES = {"conv": "convolution", "pool": "pooling", "norm": "normalisation",
                "activation": "activation", "linear": "fully connected",
                "reshape": "reshape / resize", "dropout": "dropout", "merge": "merge",
                "block": "folded block"}
MAX_AUTO_NODES = 100
MAX_ITEMS_PER_LEVEL = 400  # beyond it, the middle of a level is drawn as one node
BUNDLED_HINT = ("pip install pygraphviz (its wheels for Linux x86-64 and arm64, macOS 11+ and "
                "Windows x86-64 bundle Graphviz)")
SYSTEM_HINT = "apt-get install graphviz, brew install graphviz or conda install graphviz"
INSTALL_HINT = f"no Graphviz to draw with: {BUNDLED_HINT}, or {SYSTEM_HINT}"


def describe(node: Node) -> str:
    """`conv 3x3/2, 64`: the op and what a reader needs of its arguments (its kind says)."""
    return REGISTRY[node.op].label(node.attrs)


def shape_text(shape) -> str:
    return "×".join(map(str, shape))


def _count(tree: ScopeTree, depth: int, level: int = 0) -> int:
    total = 0
    for item in tree.items:
        if isinstance(item, ScopeTree):
            total += 1 if level + 1 > depth else _count(item, depth, level + 1)
        else:
            total += 1
    return total


def auto_depth(ir: Network) -> int:
    """The deepest view with at most MAX_AUTO_NODES nodes (at least the top level)."""
    tree = scope_tree(ir)
    best = 0
    for depth in range(tree.depth() + 1):
        if _count(tree, depth) <= MAX_AUTO_NODES:
            best = depth
    return best


def _call_label(tree: ScopeTree) -> str:
    scope = tree.scope
    local = tree.path[-1]
    if scope is None or scope.block is None:
        return local
    args = ", ".join(pair_text(v) if not isinstance(v, float) else f"{v:g}"
                     for k, v in scope.args.items() if k != "in_channels")
    call = f"{scope.block}({args})"
    return call if _auto_named(local, scope.block) else f"{local}: {call}"


def _auto_named(local: str, base: str) -> bool:
    """`conv3`, `relu6_2`, `b2_conv1`: a name the checker made up, not the user's."""
    return re.fullmatch(rf"(b\d+_|shortcut_)*{re.escape(base)}_?\d+", local) is not None


class _Dot:
    def __init__(self, ir: Network, depth: int, direction: str, shapes: bool, params: bool):
        self.ir, self.depth, self.shapes, self.params = ir, depth, shapes, params
        self.direction = direction
        self.lines: list[str] = []
        self.families: set[str] = set()
        self.owner: dict[str, str] = {}  # IR value -> diagram node that shows it
        self.edges: list[tuple[str, str, str]] = []

    def q(self, text: str) -> str:
        """A DOT string; a newline becomes DOT's centred line break."""
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'

    def render(self) -> str:
        ir = self.ir
        title = (f"{ir.name}: {ir.total_params:,} parameters, {human(ir.total_macs)} MACs "
                 "per image")
        out = [f"digraph {self.q(ir.name)} {{",
               f"  graph [rankdir={self.direction}, fontname=\"Helvetica\", fontsize=16, "
               f"labelloc=t, label={self.q(title)}, nodesep=0.3, ranksep=0.32, "
               "newrank=true];",
               "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", "
               "fontsize=11, height=0.32, margin=\"0.10,0.04\", color=\"#555555\"];",
               "  edge [fontname=\"Helvetica\", fontsize=9, color=\"#666666\", "
               "fontcolor=\"#444444\", arrowsize=0.6];"]
        for i in ir.inputs:
            self.owner[i.name] = i.name
            label = self.q(i.name + "\n" + shape_text(i.shape))
            out.append(f"  {self.q(i.name)} [label={label}, shape=ellipse, "
                       "fillcolor=\"#ffffff\"];")
        self.lines = out
        self.emit_tree(scope_tree(ir), 0, "  ")
        for name in ir.outputs:
            node_id = f"output:{name}" if len(ir.outputs) > 1 else "output"
            self.lines.append(f"  {self.q(node_id)} [label=\"output\", shape=ellipse, "
                              "fillcolor=\"#ffffff\"];")
            self.edge(name, node_id)
        seen = set()
        for source, target, label in self.edges:
            if (source, target) in seen or source == target:
                continue
            seen.add((source, target))
            attrs = f" [label={self.q(' ' + label)}]" if label and self.shapes else ""
            self.lines.append(f"  {self.q(source)} -> {self.q(target)}{attrs};")
        self.legend()
        self.lines.append("}")
        return "\n".join(self.lines) + "\n"

    def edge(self, value: str, target: str) -> None:
        source = self.owner[value]
        self.edges.append((source, target, shape_text(self.ir.shape_of(value))))

    def emit_tree(self, tree: ScopeTree, level: int, indent: str) -> None:
        items = tree.items
        if len(items) > MAX_ITEMS_PER_LEVEL:  # graphviz cannot lay out 40,000 nodes in a row
            keep = MAX_ITEMS_PER_LEVEL // 2
            self.emit_items(items[:keep], level, indent)
            self.emit_elided(items[keep:-keep], tree, indent)
            self.emit_items(items[-keep:], level, indent)
        else:
            self.emit_items(items, level, indent)

    def emit_elided(self, items: list, tree: ScopeTree, indent: str) -> None:
        """One node standing for a long stretch of layers in the middle of a level."""
        nodes = [n for item in items for n in (item.nodes() if isinstance(item, ScopeTree)
                                               else [item])]
        node_id = ".".join((*tree.path, f"elided_{nodes[0].local}"))
        label = f"… {len(nodes):,} more layers …\n{nodes[0].name} .. {nodes[-1].name}"
        self.families.add("block")
        self.lines.append(f"{indent}{self.q(node_id)} [label={self.q(label)}, "
                          f"fillcolor=\"{FAMILY_COLORS['block']}\", style=\"filled,dashed\"];")
        inside = {n.name for n in nodes}
        for value in dict.fromkeys(v for n in nodes for v in n.inputs if v not in inside):
            self.edge(value, node_id)
        for node in nodes:
            self.owner[node.name] = node_id

    def emit_items(self, items: list, level: int, indent: str) -> None:
        i = 0
        while i < len(items):
            item = items[i]
            if isinstance(item, Node):
                self.emit_node(item, indent)
            elif level + 1 > self.depth:
                run = self.identical_run(items, i)
                self.emit_folded(items[i:i + run], indent)
                i += run
                continue
            else:
                label = _call_label(item)
                self.lines.append(f"{indent}subgraph {self.q('cluster_' + '.'.join(item.path))} {{")
                self.lines.append(f"{indent}  label={self.q(label)}; labeljust=l; fontsize=11; "
                                  "style=\"rounded,dashed\"; color=\"#999999\";")
                self.emit_tree(item, level + 1, indent + "  ")
                self.lines.append(f"{indent}}}")
            i += 1

    def emit_node(self, node: Node, indent: str) -> None:
        family = REGISTRY[node.op].family
        self.families.add(family)
        label = describe(node)
        kind = REGISTRY[node.op]
        if not _auto_named(node.local, node.op) and kind.combine is None:
            label = f"{node.local}: {label}"
        if node.shares:  # a shared layer applied again
            label += f"\n(weights of {node.shares})"
        if self.params and node.params:
            label += f"\n{node.params:,} params"
        style = ""
        if family == "merge":
            style = ", shape=circle, width=0.3, fixedsize=false, margin=0.02" \
                if kind.combine != "concat" else ", shape=box, style=\"filled\""
        elif family == "activation":
            style = ", fontsize=10, height=0.24"
        self.lines.append(f"{indent}{self.q(node.name)} [label={self.q(label)}, "
                          f"fillcolor=\"{FAMILY_COLORS[family]}\"{style}];")
        for value in node.inputs:
            self.edge(value, node.name)
        self.owner[node.name] = node.name

    def identical_run(self, items: list, start: int) -> int:
        first = items[start]
        run = 1
        while start + run < len(items):
            other = items[start + run]
            if not (isinstance(other, ScopeTree) and other.scope and first.scope
                    and other.scope.block == first.scope.block and first.scope.block
                    and other.scope.args == first.scope.args
                    and other.inputs == (items[start + run - 1].output,)):
                break
            run += 1
        return run

    def emit_folded(self, run: list[ScopeTree], indent: str) -> None:
        first = run[0]
        nodes = [n for t in run for n in t.nodes()]
        node_id = ".".join(first.path)
        label = _call_label(first) + (f" × {len(run)}" if len(run) > 1 else "")
        if self.params:
            label += f"\n{sum(n.params for n in nodes):,} params"
        self.families.add("block")
        self.lines.append(f"{indent}{self.q(node_id)} [label={self.q(label)}, "
                          f"fillcolor=\"{FAMILY_COLORS['block']}\", style=\"filled\", "
                          "shape=box3d];")
        inside = {n.name for n in nodes}
        for node in nodes:
            for value in node.inputs:
                if value not in inside:
                    self.edge(value, node_id)
        for node in nodes:
            self.owner[node.name] = node_id

    def legend(self) -> None:
        families = [f for f in FAMILY_NAMES if f in self.families]
        rows = "".join(f'<TR><TD BGCOLOR="{FAMILY_COLORS[f]}" WIDTH="14" BORDER="1"></TD>'
                       f'<TD ALIGN="LEFT">{FAMILY_NAMES[f]}</TD></TR>' for f in families)
        self.lines.append("  subgraph cluster_legend {")
        self.lines.append("    label=\"legend\"; fontsize=10; style=\"rounded\"; "
                          "color=\"#bbbbbb\";")
        self.lines.append(f"    legend [shape=plaintext, style=\"\", fontsize=9, label=<"
                          f'<TABLE BORDER="0" CELLSPACING="2">{rows}</TABLE>>];')
        self.lines.append("  }")


def to_dot(ir: Network, depth: int | None = None, direction: str = "TB", shapes: bool = True,
           params: bool = False) -> str:
    depth = auto_depth(ir) if depth is None else depth
    return _Dot(ir, depth, direction, shapes, params).render()


class DotMissingError(Exception):
    """No Graphviz to draw with (or not the one asked for)."""


ENGINES = ("bundled", "system")
# Which engine `auto` takes when both are installed: the faster one, measured by
# benchmarks/diagram_engines.py (README, Performance): a system `dot` starts in about 10 ms,
# the bundled engine's child in 50-90 (an interpreter, then the ~40 libraries of
# pygraphviz's wheel), and its newer Graphviz lays cnndsl's graphs out no faster.
AUTO_ORDER = ("system", "bundled")
LAYOUT_TIMEOUT_S = 120  # a layout that runs longer is stopped
CHILD = Path(__file__).with_name("graphviz_child.py")


class Drawing(NamedTuple):
    data: bytes
    engine: str  # "bundled" or "system"
    program: str  # what drew it, in words: `graphviz bundled with pygraphviz 2.0.4`


def bundled_location() -> str | None:
    """The folder holding pygraphviz (and so the Graphviz its wheel bundles), or None."""
    try:
        spec = importlib.util.find_spec("pygraphviz")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))).parent)


def system_dot() -> str | None:
    return shutil.which("dot")


def available() -> list[str]:
    """The engines installed here, the one `auto` takes first."""
    found = {"bundled": bundled_location() is not None, "system": system_dot() is not None}
    return [e for e in AUTO_ORDER if found[e]]


def _command(engine: str, fmt: str) -> tuple[list[str], str]:
    """The command line that draws with `engine`, and what it is, in words."""
    if engine == "bundled":
        location = bundled_location()
        if location is None:
            raise DotMissingError(f"the bundled engine needs pygraphviz: {BUNDLED_HINT}")
        try:
            version = f" {importlib.metadata.version('pygraphviz')}"
        except importlib.metadata.PackageNotFoundError:
            version = ""
        return ([sys.executable, "-I", "-S", str(CHILD), fmt, location],
                f"graphviz bundled with pygraphviz{version}")
    program = system_dot()
    if program is None:
        raise DotMissingError(f"the system engine needs graphviz's `dot` on PATH: "
                              f"{SYSTEM_HINT}")
    return [program, f"-T{fmt}"], f"graphviz's {program}"


def pick(engine: str = "auto") -> str:
    """`auto` -> the first engine installed; `bundled` / `system` as asked, if installed."""
    if engine == "auto":
        found = available()
        if not found:
            raise DotMissingError(INSTALL_HINT)
        return found[0]
    if engine not in ENGINES:
        raise ValueError(f"engine must be auto, bundled or system, not {engine!r}")
    return engine


def render(dot_text: str, fmt: str, engine: str = "auto") -> Drawing:
    """Lay out and draw DOT as `fmt` in a child process (bounded in time; a crash of
    Graphviz is an error here, not the end of this process). Raises DotMissingError when
    the engine asked for is not installed, RuntimeError when it fails."""
    engine = pick(engine)
    command, program = _command(engine, fmt)
    try:
        result = subprocess.run(command, input=dot_text.encode(), capture_output=True,
                                timeout=LAYOUT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{program} did not finish the layout in {LAYOUT_TIMEOUT_S} s "
                           "and was stopped; --depth folds blocks into fewer nodes") from None
    if result.returncode != 0:
        status = (f"signal {signal.Signals(-result.returncode).name}"
                  if result.returncode < 0 else f"exit status {result.returncode}")
        said = result.stderr.decode(errors="replace").strip() or "it printed nothing"
        raise RuntimeError(f"{program} failed ({status}): {said}")
    return Drawing(result.stdout, engine, program)


def write(ir: Network, output: str | Path, engine: str = "auto", **options) -> Drawing:
    """Write the diagram; the format follows the extension (.svg, .png, .pdf, .dot).
    Without the Graphviz asked for, the .dot is written beside it and DotMissingError is
    raised. For .dot the Drawing's engine is "" (nothing was drawn)."""
    from ..atomic import write_bytes
    output = Path(output)
    dot_text = to_dot(ir, **options)
    fmt = output.suffix.lstrip(".").lower()
    if fmt == "dot":
        write_bytes(output, dot_text.encode())
        return Drawing(dot_text.encode(), "", "")
    try:
        drawing = render(dot_text, fmt, engine)
    except DotMissingError:
        write_bytes(output.with_suffix(".dot"), dot_text.encode())
        raise
    write_bytes(output, drawing.data)
    return drawing
