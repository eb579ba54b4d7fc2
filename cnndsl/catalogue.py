"""The error catalogue: every diagnostic code, a minimal example, and the fix.

docs/errors.md is generated from this table by `python tools/error_catalogue.py`, which
runs each example through the real CLI and embeds what it prints;
tests/test_catalogue.py fails when a code used in the source has no entry, when an
example no longer produces its code, or when docs/errors.md is out of date.
`cnndsl explain CODE` prints an entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Entry:
    code: str
    title: str
    explanation: str
    example: str  # the spec, written to example.cnn
    fix: str
    argv: tuple[str, ...] = ("check", "example.cnn")
    weights: dict[str, tuple[int, ...]] = field(default_factory=dict)  # -> w.safetensors


NET = "network net() {{\n    input image: 3 x 32 x 32\n{body}\n}}\n"


def _net(*lines: str) -> str:
    return NET.format(body="\n".join(f"    {line}" for line in lines))


CATALOGUE: tuple[Entry, ...] = (
    Entry("E-syntax", "the text does not parse",
          "The parser expected something else at this point; the message lists what it "
          "would have accepted. Non-UTF-8 bytes are reported here too.",
          _net("conv(16, 3) => relu"),
          "Use `->` (or a new line) between layers."),
    Entry("E-name", "an unknown or clashing name",
          "A layer, block, tensor or function name that is not defined here, or a name "
          "defined twice. A close match is suggested.",
          _net("conv(16, 3) -> rellu"),
          "Fix the spelling: `relu`."),
    Entry("E-arg", "an argument the layer does not take, or a bad value",
          "Unknown or misspelt keyword arguments, too many positional ones, missing required "
          "ones, or a value of the wrong kind (a float for channels, a word that is not a "
          "padding mode). An unknown keyword is never silently ignored.",
          _net("conv(16, 3, strdie=2)"),
          "Use the argument's real name: `stride=2`."),
    Entry("E-type", "a value of the wrong type in an expression or declaration",
          "Arithmetic on a word, a condition that is not true/false, or an unknown parameter "
          "type in a declaration.",
          "network net(c: integer = 16) {\n    input image: 3 x 32 x 32\n    conv(c, 3)\n}\n",
          "Parameter types are `int`, `float`, `bool` and `any`."),
    Entry("E-value", "a computation that has no valid result",
          "Division by zero, a number out of range (beyond 2^62), a negative number to a "
          "fractional power, or a function given arguments it cannot take.",
          _net("conv(32 / 0, 3)"),
          "Check the arithmetic; use `//` for integer division."),
    Entry("E-shape", "a layer that cannot take the shape it is given",
          "A kernel larger than its (padded) input, a linear layer before `flatten`, a concat "
          "or add of tensors whose sizes disagree. The error shows the input's shape, where "
          "it came from, the sizes so far and the output-size formula with your numbers.",
          _net("conv(16, 3) -> maxpool(2) -> conv(16, 3) -> maxpool(2)",
               "conv(16, 3) -> maxpool(2)", "conv(32, 5)"),
          "Pad (`padding=same`), use a smaller kernel, or pool less."),
    Entry("E-groups", "channels not divisible by groups",
          "A grouped convolution needs its input and output channels to be multiples of "
          "`groups`.",
          _net("conv(30, 3) -> conv(64, 3, groups=4)"),
          "Choose groups dividing both (here 2), or change the channel counts."),
    Entry("E-input", "a network without input, or a misplaced input",
          "Layers before any `input`, a network with no `input`, a block input written with "
          "a shape, or a file without a network.",
          "network net() {\n    conv(16, 3)\n}\n",
          "Start with `input image: 3 x 32 x 32`."),
    Entry("E-param", "a parameter that does not exist or has no value",
          "`--set` (or a keyword to `cnndsl.load`) names a parameter the network does not "
          "declare, or a declared parameter has neither a default nor a value.",
          "network net(width: int = 16) {\n    input image: 3 x 32 x 32\n    conv(width, 3)\n}\n",
          "Use a declared name: `--set width=32`.",
          argv=("check", "example.cnn", "--set", "widht=32")),
    Entry("E-residual", "a residual whose two sides cannot be added",
          "With an explicit shortcut, the body and the shortcut must give the same shape; "
          "an automatic shortcut can only project with a strided 1x1 convolution.",
          _net("residual {", "    conv(16, 3, stride=2, padding=1)", "} shortcut {",
               "    identity", "}"),
          "Project in the shortcut: `shortcut { conv(16, 1, stride=2) -> batchnorm }`, or "
          "drop `shortcut` for the automatic projection."),
    Entry("E-branch", "a malformed branch",
          "A branch joins its paths by `concat` or `add` and needs at least two paths.",
          _net("branch stack {", "    conv(8, 1)", "    conv(8, 3, padding=1)", "}"),
          "Write `branch concat { ... }` or `branch add { ... }`."),
    Entry("E-recursion", "a block that calls itself",
          "Blocks are expanded when checked, so a block calling itself (directly or through "
          "others) would never end.",
          "block tower(c: int) {\n    conv(c, 3, padding=1)\n    tower(c)\n}\n\n"
          + _net("tower(8)"),
          "Repeat with `tower(8) * 4` instead of recursion."),
    Entry("E-import", "an import that cannot be read or that forms a cycle",
          "Imports resolve relative to the importing file; a cycle of imports is reported "
          "with the chain.",
          'import "blocks/missing.cnn"\n\n' + _net("conv(8, 3)"),
          "Fix the path (it is relative to the file that imports it)."),
    Entry("E-onnx", "a model `cnndsl import` cannot read or express",
          "The file is not a readable ONNX model (truncated, a cycle, a tensor larger than "
          "it holds or than 2^31 elements, an input no node makes, external data outside "
          "its folder, an opset outside 13-21), or it holds operations no cnndsl layer "
          "expresses: each is named with its node and op type, all at once, and nothing "
          "is written. Names from the file are shown escaped.",
          _net("conv(8, 3)"),
          "Export the model again (opset 13-21, weights inside or beside it); for ops the "
          "language lacks, `--partial` writes the part before the first of them.",
          argv=("import", "example.cnn", "-o", "out.cnn")),
    Entry("E-limit", "a network or file beyond what cnndsl will process",
          "Parameters or activations per image over the memory limit (default half this "
          "machine's memory; --memory-limit), more than 100,000 layers, more than 1,000,000 "
          "expansion steps, repeats over 10,000, blocks nested over 32 deep, parentheses or "
          "braces nested over 64, expressions too deep, files over 4 MiB. Refused before "
          "any tensor is allocated.",
          _net("flatten -> linear(100000000)"),
          "Shrink the network, or raise --memory-limit on a machine that has the memory."),
    Entry("E-io", "a file that cannot be read or written",
          "The spec (or an input array) does not exist or is not readable; or, for "
          "`render`, Graphviz crashed, failed or ran past its time bound while drawing "
          "(reported at the network's name, with what Graphviz said); or an output cannot "
          "be written (a full disk, a read-only folder, a link or a folder where a file "
          "goes). `train` refuses, before the first batch, an --out folder that holds "
          "another run (unless resumed or --exist-ok), that another run is using, or that "
          "cannot be written; every earlier file stays as it was.",
          _net("conv(8, 3)"),
          "Check the path.",
          argv=("check", "missing.cnn")),
    Entry("E-weights", "weights that do not fit the network",
          "`--weights` must hold exactly the network's state_dict: every name, every shape. "
          "Save it from the module compiled from this spec.",
          _net("conv(8, 3)"),
          "Save the weights from this spec's module: `torch.save(m.state_dict(), 'w.pt')`.",
          argv=("compile", "example.cnn", "--to", "onnx", "-o", "out.onnx",
                "--weights", "w.safetensors"),
          weights={"conv1.weight": (8, 3, 5, 5), "conv1.bias": (8,)}),
    Entry("E-run", "onnxruntime cannot run as asked",
          "An execution provider asked for explicitly (cuda, tensorrt) is not available, or "
          "onnxruntime fell back to another one. cnndsl never falls back silently.",
          _net("conv(8, 3)"),
          "Install onnxruntime-gpu (`pip install 'cnndsl[gpu]'`) on a machine with a CUDA "
          "GPU, or use `--provider auto`.",
          argv=("run", "example.cnn", "--provider", "tensorrt")),
    Entry("E-block", "a block used where it does not fit",
          "A block with several outputs is used as one step of a chain, which passes one "
          "tensor on, or its outputs are given more or fewer names than it has.",
          "block two() {\n    input x\n    a = x -> relu\n    b = x -> sigmoid\n"
          "    output a, b\n}\n\n" + _net("two() -> conv(8, 3)"),
          "Name each output: `a, b = x -> two()`, or give the block one output."),
    Entry("E-train", "a training setting that cannot be used",
          "The `train` definition (or a --set override of it) names an unknown setting, "
          "optimizer, loss, schedule or augmentation, gives an argument a value it cannot "
          "take, or asks for a loss the network's output does not fit.",
          "network net(classes: int = 10) {\n    input image: 1 x 8 x 8\n"
          "    flatten -> linear(classes)\n}\n\ntrain net() {\n"
          "    optimizer: sdg(lr=0.1)\n    epochs: 0\n}\n",
          "Spell the choice as listed in the help (`sgd`), and give a value in range "
          "(`epochs: 10`)."),
    Entry("E-data", "training data that cannot be used",
          "The data folder is missing or empty, a class folder holds no readable image, "
          "train/ and val/ disagree on the classes, or an .npz file's labels are out of "
          "range. Unreadable files are skipped with a warning, not an error.",
          "network net(classes: int = 10) {\n    input image: 1 x 8 x 8\n"
          "    flatten -> linear(classes)\n}\n",
          "Point --data at `digits` or at a folder with one subfolder of images per class.",
          argv=("train", "example.cnn", "--data", "no_such_folder", "--out", "run")),
    Entry("E-usage", "a command line cnndsl cannot run",
          "An unknown option or command, a missing argument, or an option's value out of "
          "its range. The exit status is 2; with --json the error is the one JSON "
          "document on stdout.",
          _net("conv(8, 3)"),
          "Spell the option as `cnndsl COMMAND --help` lists it, e.g. `--memory-limit 4GiB`.",
          argv=("check", "example.cnn", "--memory-limit", "lots")),
    Entry("W-stride", "a stride that leaves rows or columns of the input unread",
          "(W + 2P - D(F-1) - 1) / S is not a whole number and the windows stop before the "
          "last rows or columns of real input (padding aside). A warning; an error with "
          "--strict.",
          "network net() {\n    input image: 3 x 7 x 7\n    conv(8, 3, stride=3)\n}\n",
          "Pad so the windows fit (`padding=1` gives 9 = 3 x 3), or use stride 2.",
          argv=("check", "example.cnn", "--strict")),
    Entry("W-layout", "an input that looks channels-last",
          "The input's last axis is 1, 3 or 4 and its first is large: it reads as many "
          "channels of a thin image, which is rarely meant. cnndsl's inputs are C x H x W, "
          "PyTorch's layout.",
          "network net() {\n    input image: 32 x 32 x 3\n    conv(8, 3)\n}\n",
          "Write the channels first: `input image: 3 x 32 x 32`."),
    Entry("W-residual", "a residual that adds nothing",
          "`residual(project=false)` adds its input only where the shapes agree. Written in a "
          "network (not a block, where some calls add and others do not), a body that "
          "changes the shape means the residual is dropped: the line does not do what it "
          "says.",
          _net("residual(project=false) {", "    conv(16, 3, padding=1)", "}"),
          "Drop `project=false` to get a 1x1 projection shortcut, or keep the body's shape."),
    Entry("W-label", "a label that names only the first call of a chain",
          "`name: a(...) -> b(...)` labels the call `a(...)`; `b(...)` and the rest of the "
          "chain get names of their own (`b1`, at the top level), which is rarely what a "
          "label in front of a chain of block calls means.",
          "block unit(c: int) {\n    conv(c, 3, padding=1) -> relu\n}\n\n"
          "network net() {\n    input image: 3 x 32 x 32\n"
          "    stage1: unit(16) -> unit(16)\n}\n",
          "Group the calls: `stage1: (unit(16) -> unit(16))` names them `stage1.0`, `stage1.1`."),
    Entry("W-shadow", "a block named like a built-in layer",
          "A block of yours has the name of a layer cnndsl provides (often one added after "
          "the block was written). Your block wins, as it does over the standard library, "
          "so the spec keeps checking as it did; the built-in layer cannot be called here.",
          "block hardsigmoid() {\n    relu6\n}\n\n"
          "network net() {\n    input image: 3 x 32 x 32\n    hardsigmoid\n}\n",
          "Rename the block (`my_hardsigmoid`) to use the built-in layer as well."),
    Entry("W-unused", "a named tensor that is never used",
          "A name was assigned but nothing reads it and it is not an output: often a "
          "forgotten skip connection.",
          "network net() {\n    input image: 3 x 32 x 32\n    skip = image -> conv(8, 1)\n"
          "    out = image -> conv(8, 3, padding=1)\n    output out\n}\n",
          "Use it (`out -> add(skip)`), list it in `output`, or drop the assignment."),
)

BY_CODE = {entry.code: entry for entry in CATALOGUE}


def explain(code: str) -> str | None:
    entry = BY_CODE.get(code)
    if entry is None:
        return None
    return (f"{entry.code}: {entry.title}\n\n{entry.explanation}\n\nexample.cnn:\n"
            + "\n".join("    " + line for line in entry.example.splitlines())
            + f"\n\nfix: {entry.fix}\n")
