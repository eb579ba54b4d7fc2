"""Language-server latency after a one-character edit, through a real LSP client on stdio.

    python benchmarks/lsp_latency.py [--runs N] [--tensors 250 1000 4000] [--requests-only]

For a ResNet-152-sized document written out flat (515 layers, one chained line per conv ->
batchnorm -> relu) and for specs/resnet152.cnn: the time from sending `didChange` to
receiving its `publishDiagnostics`, and to receiving the inlay hints requested right after
it, median of N edits (each edit flips one digit of a channel count, so every run checks a
new text). Side by side: `cnndsl check` of the same file in a fresh process, and
`cnndsl.load` in-process. A second flat series edits the text into a syntax error and back.

Then the requests an editor sends on every change or keystroke, on documents of 250 / 1,000
/ 4,000 named tensors (`tK = tJ -> conv(...) -> relu`, one a line) and on the 1,000 one with
a 40,000-character comment: documentSymbol (the outline), completion at the start of a line
in the middle (every layer, block and tensor is offered; after the comment: at its end) and
hover over a tensor in the middle; the time from request to response, median of N.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lsprotocol import types as lsp
from pygls.lsp.client import LanguageClient

import cnndsl

ROOT = Path(__file__).resolve().parent.parent


def named_tensors(count: int, comment: int = 0) -> str:
    lines = ["network many() {", "    input t0: 4 x 8 x 8"]
    lines += [f"    t{k} = t{k - 1} -> conv(4, 3, padding=1) -> relu" for k in range(1, count)]
    if comment:
        lines.insert(count // 2 + 1, "    # " + "w" * comment)
    lines += [f"    t{count - 1} -> flatten", "}", ""]
    return "\n".join(lines)


def flat_spec(layers: int = 515) -> str:
    lines = ["network flat(classes: int = 10) {", "    input image: 3 x 32 x 32"]
    for _ in range((layers - 3) // 3):
        lines.append("    conv(16, 3, padding=1, bias=false) -> batchnorm -> relu")
    lines += ["    global_avgpool -> flatten", "    fc: linear(classes)", "}", ""]
    return "\n".join(lines)


class Session:
    def __init__(self) -> None:
        self.client = LanguageClient("lsp-latency", "1")
        self.published: dict[tuple[str, int], float] = {}
        self.arrived = asyncio.Event()

        @self.client.feature(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def on_publish(ls, params: lsp.PublishDiagnosticsParams) -> None:
            self.published[(params.uri, params.version)] = time.perf_counter()
            self.last_diagnostics = params.diagnostics
            self.arrived.set()

    async def start(self) -> None:
        await self.client.start_io(sys.executable, "-m", "cnndsl", "lsp")
        await self.client.initialize_async(lsp.InitializeParams(
            capabilities=lsp.ClientCapabilities()))
        self.client.initialized(lsp.InitializedParams())

    async def stop(self) -> None:
        await self.client.shutdown_async(None)
        self.client.exit(None)
        await self.client.stop()

    async def published_at(self, uri: str, version: int) -> float:
        while (uri, version) not in self.published:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 60)
        return self.published[(uri, version)]

    async def edit(self, uri: str, text: str, version: int, lines: int) -> tuple[float, float]:
        """Seconds to the diagnostics, and to the inlay hints asked for right after."""
        start = time.perf_counter()
        self.client.text_document_did_change(lsp.DidChangeTextDocumentParams(
            text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=text)]))
        hints = await self.client.text_document_inlay_hint_async(lsp.InlayHintParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri),
            range=lsp.Range(start=lsp.Position(line=0, character=0),
                            end=lsp.Position(line=lines, character=0))))
        done = time.perf_counter()
        diagnosed = await self.published_at(uri, version)
        assert hints, f"no inlay hints for version {version}"
        return diagnosed - start, done - start


def variants(text: str, runs: int, broken: bool) -> list[str]:
    """Texts one character away from the previous one."""
    lines = text.split("\n")
    middle = len(lines) // 2
    out = []
    for i in range(runs):
        edited = list(lines)
        if broken:
            edited[middle] = edited[middle].replace(")", "", 1) if i % 2 == 0 \
                else edited[middle]
        else:
            # the first digit of the first argument list from the middle on: a channel count
            target = next(k for k in range(middle, len(lines))
                          if re.search(r"\(\d", lines[k]))
            at = re.search(r"\(\d", lines[target]).start() + 1
            digit = int(lines[target][at])
            new = str((digit + 1 + i % 2) % 10 or 1)
            edited[target] = lines[target][:at] + new + lines[target][at + 1:]
        out.append("\n".join(edited))
    return out


async def measure_document(path: Path, runs: int, broken: bool = False) -> dict:
    session = Session()
    await session.start()
    uri = path.resolve().as_uri()
    text = path.read_text()
    session.client.text_document_did_open(lsp.DidOpenTextDocumentParams(
        text_document=lsp.TextDocumentItem(uri=uri, language_id="cnn", version=1, text=text)))
    await session.published_at(uri, 1)
    diagnostics, hints = [], []
    lines = text.count("\n") + 1
    for version, edited in enumerate(variants(text, runs + 2, broken), start=2):
        d, h = await session.edit(uri, edited, version, lines)
        if version > 3:  # two warm-up edits
            diagnostics.append(d)
            hints.append(h)
    await session.stop()
    return {"diagnostics": statistics.median(diagnostics), "hints": statistics.median(hints),
            "max": max(hints)}


async def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = await asyncio.wait_for(call(), 120)
    return time.perf_counter() - start, result


async def measure_requests(count: int, runs: int, comment: int = 0) -> dict:
    """Median seconds of documentSymbol, completion and hover on a document of `count`
    named tensors (and a comment of `comment` characters in its middle)."""
    session = Session()
    await session.start()
    text = named_tensors(count, comment)
    with tempfile.TemporaryDirectory() as tmp:
        uri = (Path(tmp) / f"tensors_{count}.cnn").as_uri()
        session.client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            text_document=lsp.TextDocumentItem(uri=uri, language_id="cnn", version=1,
                                               text=text)))
        await session.published_at(uri, 1)
        assert not session.last_diagnostics, session.last_diagnostics[:1]
        lines = text.split("\n")
        middle = count // 2 + 1  # 0-based: the line of t{middle - 1}, or the comment
        document = lsp.TextDocumentIdentifier(uri=uri)
        if comment:
            completion_at = lsp.Position(line=middle, character=len(lines[middle]))
            hover_at = lsp.Position(line=middle + 1, character=5)
        else:
            completion_at = lsp.Position(line=middle, character=4)
            hover_at = lsp.Position(line=middle, character=5)
        calls = {
            "symbols": lambda: session.client.text_document_document_symbol_async(
                lsp.DocumentSymbolParams(text_document=document)),
            "completion": lambda: session.client.text_document_completion_async(
                lsp.CompletionParams(text_document=document, position=completion_at)),
            "hover": lambda: session.client.text_document_hover_async(
                lsp.HoverParams(text_document=document, position=hover_at))}
        times = {}
        for name, call in calls.items():
            runs_of = []
            for _ in range(runs + 1):
                seconds, result = await timed(call)
                runs_of.append(seconds)
            assert result, f"no {name} for {count} tensors"
            if name == "symbols":
                assert len(result[0].children) == count
            times[name] = statistics.median(runs_of[1:])  # the first warms up
        await session.stop()
    return times


def requests_table(tensors: list[int], runs: int) -> None:
    rows = [(f"{count:,} named tensors", asyncio.run(measure_requests(count, runs)))
            for count in tensors]
    middle = tensors[len(tensors) // 2]
    rows.append((f"{middle:,} named tensors, 40,000-character comment",
                 asyncio.run(measure_requests(middle, runs, comment=40_000))))
    print(f"\nrequests, median of {runs} (ms)")
    print(f"{'document':<48} {'documentSymbol':>14} {'completion':>11} {'hover':>7}")
    for label, t in rows:
        print(f"{label:<48} {1000 * t['symbols']:>14.1f} {1000 * t['completion']:>11.1f} "
              f"{1000 * t['hover']:>7.1f}")
    if len(tensors) >= 2:
        low, high = rows[-3][1], rows[-2][1]
        print(f"from {tensors[-2]:,} to {tensors[-1]:,} tensors: " + ", ".join(
            f"{name} x{high[name] / low[name]:.1f}" for name in ("symbols", "completion",
                                                                 "hover")))


def cli_check(path: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cnndsl", "check", str(path)], check=True,
                       capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_process(path: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        cnndsl.load(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--tensors", type=int, nargs="+", default=[250, 1000, 4000])
    parser.add_argument("--requests-only", action="store_true",
                        help="only the documentSymbol / completion / hover table")
    args = parser.parse_args()
    if args.requests_only:
        requests_table(args.tensors, args.runs)
        return
    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "flat_515.cnn"
        flat.write_text(flat_spec())
        layers = len(cnndsl.load(flat).layers)
        rows = []
        for label, path, broken in ((f"flat, {layers} layers", flat, False),
                                    (f"flat, {layers} layers, syntax error and back", flat,
                                     True),
                                    ("specs/resnet152.cnn", ROOT / "specs" / "resnet152.cnn",
                                     False)):
            lsp_times = asyncio.run(measure_document(path, args.runs, broken))
            rows.append((label, lsp_times, cli_check(path, max(3, args.runs // 3)),
                         in_process(path, max(3, args.runs // 3))))
    print(f"median of {args.runs} one-character edits (ms)")
    print(f"{'document':<44} {'diagnostics':>11} {'+ hints':>8} {'max':>6} "
          f"{'cnndsl check':>13} {'load()':>7}")
    for label, t, cli, load in rows:
        print(f"{label:<44} {1000 * t['diagnostics']:>11.1f} {1000 * t['hints']:>8.1f} "
              f"{1000 * t['max']:>6.0f} {1000 * cli:>13.0f} {1000 * load:>7.1f}")
    requests_table(args.tensors, args.runs)


if __name__ == "__main__":
    main()
