"""The `cnndsl` command. Exit status: 0 success, 1 errors in the spec, 2 usage errors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .diagnostics import CnnError, Diagnostic, render_all, use_color
from .source import SourceMap

EXIT_OK, EXIT_SPEC, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def parse_value(text: str):
    """A --set value: int, float, true/false, or a word."""
    from .values import Symbol
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return Symbol(text)


def parse_sets(pairs: list[str]) -> dict:
    values = {}
    for pair in pairs or []:
        name, eq, value = pair.partition("=")
        if not eq or not name.strip().isidentifier():
            raise UsageError(f"--set expects NAME=VALUE, got `{pair}`")
        values[name.strip()] = parse_value(value.strip())
    return values


def _load(args):
    from .api import load
    return load(Path(args.spec), network=args.network, strict=getattr(args, "strict", False),
                **parse_sets(args.set))


def cmd_check(args) -> int:
    from .report import layer_table, to_json
    model = _load(args)
    if args.json:
        print(json.dumps({"ok": True, **to_json(model.ir)}, indent=2))
    else:
        if model.warnings:
            sys.stderr.write(render_all(list(model.warnings), model.program.sources,
                                        use_color()) + "\n")
        print(layer_table(model.ir), end="")
    return EXIT_OK


def cmd_compile(args) -> int:
    from .atomic import write_text
    model = _load(args)
    if args.to == "torch":
        text = model.to_torch_source()
        write_text(args.output, text)
    print(f"wrote {args.output} ({args.to}, {model.params:,} parameters)", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnndsl", description="Check and compile .cnn convolutional network specs.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"cnndsl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def spec_command(name: str, help: str):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("spec", help="the .cnn file")
        p.add_argument("--set", action="append", metavar="NAME=VALUE",
                       help="override a network parameter (repeatable)")
        p.add_argument("--network", help="which network, when the file defines several")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    check = spec_command("check", "check every shape; print the layer table and totals")
    check.add_argument("--strict", action="store_true", help="treat warnings as errors")
    check.set_defaults(run=cmd_check)

    comp = spec_command("compile", "compile to PyTorch source")
    comp.add_argument("--to", choices=["torch"], required=True, help="the target")
    comp.add_argument("-o", "--output", required=True, help="the file to write")
    comp.add_argument("--strict", action="store_true", help="treat warnings as errors")
    comp.set_defaults(run=cmd_compile)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as exc:
        parser.error(str(exc))
    except CnnError as exc:
        _report(exc, args)
        return EXIT_SPEC
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return EXIT_OK


def _report(exc: CnnError, args) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "errors": [
            d.to_json() for d in exc.diagnostics if d.severity == "error"], "warnings": [
            d.to_json() for d in exc.diagnostics if d.severity == "warning"]}, indent=2))
        return
    sys.stderr.write(render_all(exc.diagnostics, exc.sources or SourceMap(), use_color()))
    errors = sum(d.severity == "error" for d in exc.diagnostics)
    sys.stderr.write(f"\n{errors} error{'s' if errors != 1 else ''}\n")


def run() -> None:
    sys.exit(main())


__all__ = ["Diagnostic", "main", "run"]
