"""The training loop behind `cnndsl train` and `Model.fit`.

One loop serves a single process and `torchrun` (DistributedDataParallel): the spec's
`batch` is the global batch, split across ranks, and each rank's loss is scaled so that
the averaged gradient equals the single-process one. Randomness: the shuffling order comes
from a generator seeded by (seed, epoch); augmentation and dropout draw from torch's global
generator, whose state is saved with every resumable checkpoint, so an interrupted run
resumed from its last step ends with the same weights as an uninterrupted one (on CPU).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import atomic
from ..diagnostics import CnnError, Diagnostic, Label, printable_text
from . import state as saved_state
from . import tasks
from .combine import OutputLosses, pick
from .data import Data, eval_transform
from .folder import METRICS, STATE_FILE, RunFolder, io_error
from .pipeline import Batches
from .spec import TrainConfig

LOG_EVERY = 50  # plain-text progress: a line every N steps when not on a terminal
STOP_SIGNALS = ("SIGINT", "SIGTERM")  # Ctrl-C; what docker, SLURM and torchrun send


class TrainingStopped(Exception):  # noqa: N818 - a stop, not an error
    """Ctrl-C or SIGTERM: a resumable state was saved."""

    def __init__(self, out: Path | None, epoch: int, step: int,
                 signum: int = signal.SIGINT):
        super().__init__(f"interrupted at epoch {epoch}, step {step}")
        self.out, self.epoch, self.step, self.signum = out, epoch, step, int(signum)


class StoppedElsewhere(Exception):  # noqa: N818 - another process's error, reported there
    """Under torchrun: another process found an error and reports it; this one stops."""


def _error(message: str, help: str | None = None, **kw) -> CnnError:
    return CnnError([Diagnostic(code="E-train", message=message, help=help, **kw)])


# ---- distributed ----------------------------------------------------------------------


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_ranks(device: torch.device) -> Ranks:
    """Under torchrun (WORLD_SIZE > 1): join the process group, gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def shard(batch: list[int], ranks: Ranks) -> list[int]:
    """This rank's part of a global batch: every sample in exactly one rank."""
    return batch[ranks.rank::ranks.world]


def global_batches(order: list[int], size: int, world: int,
                   least: int = 1) -> list[list[int]]:
    """The epoch's global batches; a last batch too small to give every rank `least`
    samples is merged into the one before it, so every sample is still seen once per
    epoch."""
    batches = [order[i:i + size] for i in range(0, len(order), size)]
    if len(batches) > 1 and len(batches[-1]) < world * least:
        last = batches.pop()
        batches[-1] = batches[-1] + last
    return batches


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


# ---- building blocks from the config ---------------------------------------------------


def build_optimizer(config: TrainConfig, params, backbone=()) -> torch.optim.Optimizer:
    """The optimizer over `params`, and a second group for the frozen `backbone` at
    `backbone_lr_scale` x lr: empty until the backbone trains (`unfreeze_after`), so frozen
    parameters are not in the optimizer."""
    args = dict(config.optimizer.args)
    name = config.optimizer.name
    if config.freeze is not None:
        params = [{"params": list(params)},
                  {"params": list(backbone), "lr": args["lr"] * config.backbone_lr_scale}]
    if name == "sgd":
        return torch.optim.SGD(params, **args)
    if name == "adam":
        return torch.optim.Adam(params, **args)
    if name == "adamw":
        return torch.optim.AdamW(params, **args)
    return torch.optim.RMSprop(params, **args)


def build_schedule(config: TrainConfig, optimizer, steps_per_epoch: int):
    """A per-step schedule (warm-up is linear over its epochs)."""
    name, args = config.schedule.name, config.schedule.args
    total = config.epochs * steps_per_epoch
    if name == "one_cycle":
        max_lr = args["max_lr"] or config.optimizer.args["lr"]
        scales = [1.0, config.backbone_lr_scale][:len(optimizer.param_groups)]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[max_lr * k for k in scales], total_steps=total,
            pct_start=args["pct_start"])
    warmup = args.get("warmup", 0) * steps_per_epoch
    base = config.optimizer.args["lr"]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "step":
            return args["gamma"] ** (step // (args["every"] * steps_per_epoch))
        if name == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            floor = args["min_lr"] / base
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class WeightAverage:
    """An exponential moving average of a module's weights and buffers (`ema:`, as
    Ultralytics' ModelEMA; torch's swa_utils has no ramped decay): after each optimizer
    step, average = d * average + (1 - d) * weights, d = decay * (1 - exp(-steps / tau)).
    Evaluation, plots and checkpoints use the average."""

    def __init__(self, model: nn.Module, decay: float, tau: float):
        import copy
        self.module = copy.deepcopy(_plain(model)).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0
        self._pairs: tuple[list, list] | None = None

    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - self.decay * (1.0 - math.exp(-self.updates / self.tau))
        if self._pairs is None:
            own, theirs = self.module.state_dict(), _plain(model).state_dict()
            floats = [k for k, v in own.items() if v.dtype.is_floating_point]
            self._pairs = [own[k] for k in floats], [theirs[k] for k in floats]
        with torch.no_grad():
            torch._foreach_lerp_(self._pairs[0], self._pairs[1], weight)


# ---- checkpoints -------------------------------------------------------------------------


def weights_bytes(module: nn.Module, path: Path) -> bytes:
    """A state_dict as safetensors (names = the spec's), made in memory: the file is
    written by atomic.py, whose failures (a full disk) are OSErrors naming `path`."""
    from safetensors import SafetensorError
    from safetensors.torch import save
    state = {k: v.detach().cpu().contiguous() for k, v in _plain(module).state_dict().items()}
    try:
        return save(state, metadata={"format": "pt", "producer": "cnndsl"})
    except SafetensorError as exc:
        raise OSError(errno.EIO, str(exc), str(path)) from None


def _plain(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def state_bytes(state: dict[str, Any]) -> bytes:
    """torch.save in memory (torch's own file writer reports a full disk as a
    RuntimeError without the errno)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinity as None: JSON that any reader takes."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# ---- the loop ----------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a run stands; everything here is saved with a resumable state."""

    epoch: int = 0  # the epoch under way (0-based)
    step: int = 0  # batches of it already done
    loss_sum: float = 0.0
    loss_den: float = 0.0
    correct: int = 0
    seen: int = 0  # what `correct` counts against: samples, or pixels
    samples: int = 0
    history: list[dict] = field(default_factory=list)
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    lr: float = 0.0  # the learning rate the epoch started with

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Trainer:
    config: TrainConfig
    data: Data
    module: nn.Module
    out: Path | None = None
    device: str = "auto"
    progress_bar: bool | None = None  # None: on a terminal only
    log: Callable[[str], None] = field(
        default=lambda line: print(printable_text(line), file=sys.stderr))
    fingerprint: dict = field(default_factory=dict)
    stop_at: tuple[int, int] | None = None  # (epoch, step): behave as if Ctrl-C came there
    frozen: set[str] = field(default_factory=set)  # layers kept frozen (config.freeze)
    # claims `out` (rank 0, before the first batch): locked, checked writable; its path
    # becomes `out` (a new runs/trainN when it was None)
    claim: Callable[[], RunFolder] | None = None
    beside: dict[str, bytes] = field(default_factory=dict)  # written with the checkpoints
    # a batch norm over one value per channel (after global pooling): PyTorch trains it
    # on 2 samples or more, so every rank's batch holds 2 at least
    one_value_norm: tuple[str, Any] | None = None  # its name and span

    def __post_init__(self):
        self.dev = resolve_device(self.device)
        self.ranks = init_ranks(self.dev)
        world = self.ranks.world
        if self.config.batch < world:
            raise _error(f"batch {self.config.batch} is smaller than the {world} "
                         "processes it is split across", span=self.config.spans.get("batch"),
                         help=f"use at least batch {world}")
        if len(self.data.train) < world:
            raise _error(f"{len(self.data.train)} training sample(s) cannot be split across "
                         f"{world} processes: each needs one at least",
                         span=self.config.spans.get("data"),
                         help=f"train with at most {max(len(self.data.train), 1)} processes "
                         "(--nproc_per_node), or on more data")
        self.least = 1 if self.one_value_norm is None else 2  # samples a rank's batch needs
        self._check_one_value_norm()
        self.folder: RunFolder | None = None
        self.written: list[str] = []  # the files this run wrote, in order, once each
        self.resumed = False
        self.task = tasks.get(self.config.task or "classify")
        self.classes = len(self.data.train.classes)
        self.losses = OutputLosses(
            self.config, lambda config: self.task.loss(config, self.classes, self.dev))
        self.objective = self.losses.terms[0][2]  # the main output's loss
        self.prepare = eval_transform([(a.name, a.args) for a in self.config.augment])
        size = tuple(self.data.train[0][0].shape[-2:]) if len(self.data.train) else (1, 1)
        self.train_batches = Batches(
            self.data.train, augment=self.task.augmenter(self.config, size),
            prepare=self.prepare, seed=self.config.seed, workers=self.config.workers)
        self._eval_batches: dict[int, Batches] = {}
        self._interrupted: int | bool = False  # the stop signal's number, once one came
        self._backbone: list[nn.Parameter] = []  # frozen parameters, until they train
        self._frozen_norms: list[nn.Module] = []  # batch norms kept in eval mode
        self.average: WeightAverage | None = None  # `ema:` the weights evaluated and saved

    def _check_one_value_norm(self) -> None:
        """Batches that would give a rank one sample for a batch norm over one value per
        channel: refused at `batch` (or `data`), instead of PyTorch's error mid-epoch."""
        if self.least == 1:
            return
        world, batch, train = self.ranks.world, self.config.batch, len(self.data.train)
        name, span = self.one_value_norm
        need = f"`{name}` normalises one value per channel (a 1 x 1 map) and needs 2 or " \
               "more to train"
        related = (Label(span=span, text="one value per channel"),) if span else ()
        each = f" per process ({world} processes)" if world > 1 else ""
        if batch < 2 * world:
            raise _error(f"batch {batch} gives each step {batch // world} sample{each}, but "
                         f"{need}", span=self.config.spans.get("batch"),
                         help=f"use batch {2 * world} or more", related=related)
        if train < 2 * world:
            raise _error(f"{train} training sample(s) give each step {train // world} "
                         f"sample{each}, but {need}", span=self.config.spans.get("data"),
                         help=f"train on {2 * world} samples or more", related=related)

    # -- public --------------------------------------------------------------------------

    def fit(self, resume: Path | None = None) -> dict:
        config = self.config
        model = self.module.to(self.dev)
        if config.channels_last and self.dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self._freeze(model)
        steps = len(global_batches(list(range(len(self.data.train))), config.batch,
                                   self.ranks.world, self.least))
        optimizer = build_optimizer(config, [p for p in model.parameters() if p.requires_grad])
        schedule = build_schedule(config, optimizer, steps)
        scaler = torch.amp.GradScaler(enabled=config.amp == "fp16")
        if config.ema:
            self.average = WeightAverage(model, config.ema["decay"], config.ema["tau"])
        progress = Progress()
        if resume is not None:
            progress = self._restore(resume, model, optimizer, schedule, scaler, steps)
            if self._complete(progress):
                return self._done(model, progress, resume)
            self.log(f"resuming {resume} at epoch {progress.epoch + 1}, step {progress.step}")
        else:
            self._unfreeze_if_due(progress, optimizer)
        self._claim_folder()
        net = self._wrap(model)
        try:
            with self._stop_signals():
                while progress.epoch < config.epochs:
                    started = time.perf_counter()
                    self._train_epoch(net, optimizer, schedule, scaler, progress, steps)
                    record = self._finish_epoch(model, optimizer, schedule, scaler, progress,
                                                time.perf_counter() - started)
                    if record.pop("unfrozen"):
                        net = self._wrap(model)  # DDP syncs only what trained when built
                    self.log(_epoch_line(record, config.epochs, self.task))
                    if self._should_stop(progress):
                        self.log(f"early stop: no improvement in {config.early_stop['metric']}"
                                 f" for {progress.bad_epochs} epochs")
                        break
        finally:
            if self.folder is not None:
                self.folder.release()
        return self._done(model, progress)

    def evaluated(self, model: nn.Module) -> nn.Module:
        """What is evaluated, plotted and saved: the average of the weights (`ema:`), else
        the weights themselves."""
        return self.average.module if self.average is not None else model

    def _done(self, model, progress: Progress, complete: Path | None = None) -> dict:
        """The summary; `complete`: the folder of a finished run resumed, nothing done."""
        self.close()
        if self.average is not None:  # the module returned is the one evaluated and saved
            _plain(model).load_state_dict(self.average.module.state_dict())
        summary = self._summary(progress)
        summary["written"] = [n for n in self.written if n != STATE_FILE and
                              n not in self.beside]
        summary["complete"] = complete is not None
        if complete is not None:
            summary["out"] = str(complete)
            self.log(f"{complete} is complete ({self._how_complete(progress)}): nothing to "
                     "train, nothing written")
        summary["rank_divergence"] = self.rank_divergence(model)
        if self.ranks.distributed:
            dist.destroy_process_group()
        return summary

    def _complete(self, progress: Progress) -> bool:
        return progress.epoch >= self.config.epochs or self._should_stop(progress)

    def _how_complete(self, progress: Progress) -> str:
        if self._should_stop(progress):
            return f"stopped early after epoch {progress.epoch}"
        return f"{progress.epoch} epoch(s) trained of {self.config.epochs}"

    def _claim_folder(self) -> None:
        """Rank 0 claims the run's folder before the first batch; every rank stops when
        that fails (rank 0 reports it)."""
        error = None
        if self.claim is not None and self.ranks.main:
            try:
                self.folder = self.claim()
                self.out = self.folder.path
            except CnnError as exc:
                error = exc
        self._agree(error)

    def _agree(self, error: BaseException | None) -> None:
        """Raise `error` here, and StoppedElsewhere on the other ranks, when any rank has
        one: under torchrun an error found by one process stops all, reported once."""
        if self.ranks.distributed:
            failed = torch.tensor([1.0 if error is not None else 0.0])
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            if error is None and failed.item():
                raise StoppedElsewhere()
        if error is not None:
            raise error

    # -- freezing ------------------------------------------------------------------------

    def _freeze(self, model: nn.Module) -> None:
        """Frozen layers: no gradient, not in the optimizer, batch norm in eval mode (its
        running statistics stay as loaded)."""
        for name, param in model.named_parameters():
            if name.rpartition(".")[0] in self.frozen:
                param.requires_grad_(False)
                self._backbone.append(param)
        self._frozen_norms = [m for name, m in model.named_modules() if name in self.frozen
                              and isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _unfreeze_if_due(self, progress: Progress, optimizer) -> bool:
        """From epoch `unfreeze_after` on, the frozen layers train too (at
        backbone_lr_scale x lr). Whether a saved state is unfrozen follows from its epoch."""
        after = self.config.unfreeze_after
        if after is None or progress.epoch < after or not self._backbone:
            return False
        for param in self._backbone:
            param.requires_grad_(True)
        optimizer.param_groups[1]["params"].extend(self._backbone)
        self._backbone, self._frozen_norms = [], []
        if progress.epoch > 0:
            self.log(f"from epoch {progress.epoch + 1} the frozen layers train too, at "
                     f"{self.config.backbone_lr_scale:g} x the learning rate")
        return True

    def _wrap(self, model: nn.Module) -> nn.Module:
        return nn.parallel.DistributedDataParallel(model) if self.ranks.distributed else model

    # -- one epoch -----------------------------------------------------------------------

    def _train_epoch(self, net, optimizer, schedule, scaler, progress: Progress, steps: int):
        config, data = self.config, self.data.train
        net.train()
        for norm in self._frozen_norms:
            norm.eval()
        batches = global_batches(epoch_order(len(data), config.seed, progress.epoch),
                                 config.batch, self.ranks.world, self.least)
        bar = self._bar(steps, progress)
        autocast = self._autocast()
        if progress.step == 0:
            progress.lr = optimizer.param_groups[0]["lr"]
        mine = [shard(batch, self.ranks) for batch in batches[progress.step:]]
        loaded = self.train_batches(mine, progress.epoch)
        for step in range(progress.step, len(batches)):
            if self._stop_requested() or self.stop_at == (progress.epoch, step):
                self._save_resumable(net, optimizer, schedule, scaler, progress)
                raise TrainingStopped(self.out, progress.epoch, step,
                                      self._interrupted or signal.SIGINT)
            x, y = next(loaded)
            x = x.to(self.dev, non_blocking=True)
            y = y.to(self.dev, non_blocking=True)
            if config.channels_last and self.dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                outputs = net(x)
            terms = self.losses(outputs, y)
            loss = self.losses.combine(terms, self._all_sum, self.ranks.world)
            logits, total, den = pick(outputs, self.losses.main), terms[0].total, terms[0].den
            if not torch.isfinite(loss):
                raise self._diverged(loss, x, progress, step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(net.parameters(), config.clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            if self.average is not None:
                self.average.update(net)
            progress.loss_sum += float(total.detach())
            progress.loss_den += float(den)
            correct, counted = self.task.counts(logits, y, config)
            progress.correct += correct
            progress.seen += counted
            progress.samples += len(y)
            progress.step = step + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{progress.loss_sum / progress.loss_den:.4f}",
                                acc=f"{progress.correct / progress.seen:.3f}")
            elif (step + 1) % LOG_EVERY == 0 and self.ranks.main:
                self.log(f"  epoch {progress.epoch + 1} step {step + 1}/{steps}: loss "
                         f"{progress.loss_sum / progress.loss_den:.4f}")
        if bar is not None:
            bar.close()

    def _diverged(self, loss, x, progress: Progress, step: int) -> CnnError:
        """The loss is NaN or infinite: the likely cause, and what the folder keeps."""
        where = f"the loss became {loss.item()} at epoch {progress.epoch + 1}, step {step + 1}"
        first = not self.resumed and progress.epoch == 0 and step == 0
        if not torch.isfinite(x).all():
            why, fix = ": the batch's images hold NaN or infinite values", "check the data"
        elif first:
            why, fix = (" (the first step: no update has been made yet)",
                        "check the data, the loss's class weights and `normalize`'s std")
        else:
            why, fix = "", "lower the learning rate, add `clip: 1.0`, or check the data"
        return _error(f"{where}{why}; training stopped", help=f"{fix}; {self._kept(progress)}")

    def _kept(self, progress: Progress) -> str:
        """What the run's folder holds after a stop."""
        if self.out is None:
            return "nothing was saved (no output folder)"
        if progress.history:
            return (f"{self.out} keeps the checkpoints of epoch {len(progress.history)} "
                    f"(best: epoch {progress.best_epoch})")
        if self.resumed:
            return f"{self.out / STATE_FILE} is as it was"
        return "no epoch finished, so nothing was saved"

    def _stop_requested(self) -> bool:
        """Ctrl-C or SIGTERM seen (under torchrun, by any process: all stop at the same
        step)."""
        if not self.ranks.distributed:
            return bool(self._interrupted)
        seen = torch.tensor([float(self._interrupted)])
        dist.all_reduce(seen, op=dist.ReduceOp.MAX)
        if seen.item() and not self._interrupted:
            self._interrupted = int(seen.item())
        return bool(seen.item())

    def _finish_epoch(self, model, optimizer, schedule, scaler, progress: Progress,
                      seconds: float) -> dict:
        self._sync_buffers(model)
        sums = self._all_sum(torch.tensor([progress.loss_sum, progress.loss_den,
                                           float(progress.correct), float(progress.seen),
                                           float(progress.samples)], dtype=torch.float64))
        val = self.evaluate(self.evaluated(model), self.data.val)
        record = {"epoch": progress.epoch + 1, "train_loss": float(sums[0] / sums[1]),
                  "train_accuracy": float(sums[2] / max(float(sums[3]), 1.0)),
                  "train_samples": int(sums[4]), "val_loss": val["loss"],
                  **self.task.record(val), "lr": progress.lr, "seconds": round(seconds, 3)}
        progress.history.append(record)
        metric = self.config.early_stop["metric"] if self.config.early_stop else \
            self.task.best_metric
        value = record[metric] if metric == "val_loss" else -record[metric]
        min_delta = self.config.early_stop["min_delta"] if self.config.early_stop else 0.0
        improved = progress.best is None or value < progress.best - min_delta
        if improved:
            progress.best, progress.best_epoch, progress.bad_epochs = value, record["epoch"], 0
        else:
            progress.bad_epochs += 1
        progress.epoch += 1
        progress.step = 0
        progress.loss_sum = progress.loss_den = 0.0
        progress.correct = progress.seen = progress.samples = 0
        unfrozen = progress.epoch < self.config.epochs and self._unfreeze_if_due(progress,
                                                                                 optimizer)
        error = None
        try:
            if self.out is not None and self.ranks.main:
                self._write_epoch(model, optimizer, schedule, scaler, progress, improved)
                # last: a plot that fails leaves a state
                self._plots(self.evaluated(model), progress, val)
        except CnnError as exc:
            error = exc
        self._agree(error)
        return {**record, "unfrozen": unfrozen}

    def _write_epoch(self, model, optimizer, schedule, scaler, progress: Progress,
                     improved: bool) -> None:
        """The epoch's checkpoints, metrics and state: all of them, or (a full disk)
        none, the folder as the last epoch left it."""
        def files() -> dict[str, bytes]:
            weights = weights_bytes(self.evaluated(model), self.out / (
                "best.safetensors" if improved else "last.safetensors"))
            return {**self.beside, **({"best.safetensors": weights} if improved else {}),
                    "last.safetensors": weights, METRICS: json.dumps(
                        json_safe(progress.history), indent=2, allow_nan=False).encode()
                    + b"\n", STATE_FILE: self._state_bytes(model, optimizer, schedule, scaler,
                                                          progress)}
        self._write(files)

    def _write(self, files: Callable[[], dict[str, bytes]]) -> None:
        """Run files written together; a failure (a full disk) is E-io naming the file."""
        try:
            made = files()
            atomic.write_files({self.out / name: data for name, data in made.items()})
        except OSError as exc:
            raise io_error(f"cannot write {exc.filename or self.out}: "
                           f"{exc.strerror or exc}; training stopped",
                           help=f"free space or give another --out; the files in {self.out} "
                           "are as the last finished epoch left them") from None
        self.written += [name for name in made if name not in self.written]

    def _should_stop(self, progress: Progress) -> bool:
        stop = self.config.early_stop
        return bool(stop) and progress.bad_epochs >= stop["patience"]

    def _sync_buffers(self, model: nn.Module) -> None:
        """Batch-norm statistics move on each rank's own samples: take rank 0's, so every
        rank evaluates and ends with the same weights."""
        if self.ranks.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)
            if self.average is not None:  # averaged from each rank's own statistics
                for tensor in self.average.module.state_dict().values():
                    dist.broadcast(tensor, src=0)

    def rank_divergence(self, model: nn.Module) -> float:
        """Largest difference of any weight between this rank and rank 0 (0.0 alone)."""
        if not self.ranks.distributed:
            return 0.0
        worst = torch.zeros((), dtype=torch.float64)
        for tensor in _plain(model).state_dict().values():
            reference = tensor.detach().clone()
            dist.broadcast(reference, src=0)
            diff = (tensor.detach().double() - reference.double()).abs().max()
            worst = torch.maximum(worst, diff.cpu())
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        return float(worst)

    # -- evaluation ----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data) -> dict:
        """Loss and the task's metrics over a whole dataset, batch by batch (every rank
        computes the same numbers)."""
        model = _plain(model)
        was_training = model.training
        model.eval()
        evaluator = self.task.evaluator(data.classes, self.config)
        total, den = 0.0, 0.0
        for x, y in self._eval_loader(data)(_in_order(len(data), self.config.batch)):
            with self._autocast():
                logits = pick(model(x.to(self.dev)), self.losses.main).float()
            y = y.to(self.dev)
            part, part_den = self.objective(logits, y)
            total, den = total + float(part), den + float(part_den)
            evaluator.update(logits, y)
        report = evaluator.compute()
        model.train(was_training)
        return {**report, "loss": total / den if den else float("nan")}

    @torch.no_grad()
    def samples(self, model: nn.Module, data, count: int):
        """The first `count` samples of `data`: images (before normalisation), true and
        predicted targets."""
        model = _plain(model)
        was_training = model.training
        model.eval()
        rows = list(range(min(count, len(data))))
        images = torch.stack([data[i][0] for i in rows])
        truth = torch.stack([torch.as_tensor(data[i][1]) for i in rows])
        with self._autocast():
            predicted = self.task.predicted(pick(model(self.prepare(images).to(self.dev)),
                                                 self.losses.main).float().cpu())
        model.train(was_training)
        return images, truth, predicted

    @torch.no_grad()
    def write_predictions(self, model: nn.Module, data, folder: Path) -> None:
        """The task's per-sample outputs for every sample of `data`, batch by batch."""
        model = _plain(model)
        model.eval()
        names = getattr(data, "names", None) or [f"{i:05d}" for i in range(len(data))]
        folder.mkdir(parents=True, exist_ok=True)
        for batch in _in_order(len(data), self.config.batch):
            images = torch.stack([data[i][0] for i in batch])
            with self._autocast():
                logits = pick(model(self.prepare(images).to(self.dev)),
                              self.losses.main).float().cpu()
            self.task.write_predictions(folder, [names[i] for i in batch], images, logits)

    def _eval_loader(self, data) -> Batches:
        key = id(data)
        if key not in self._eval_batches:
            self._eval_batches[key] = Batches(data, augment=None, prepare=self.prepare,
                                              seed=self.config.seed,
                                              workers=self.config.workers)
        return self._eval_batches[key]

    def close(self) -> None:
        """The DataLoader workers end."""
        for batches in (self.train_batches, *self._eval_batches.values()):
            batches.close()

    # -- helpers -------------------------------------------------------------------------

    def _autocast(self):
        if self.config.amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.dev.type, dtype=dtype)

    def _all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.ranks.distributed:
            dist.all_reduce(tensor)
        return tensor

    def _bar(self, steps: int, progress: Progress):
        show = self.progress_bar
        if show is None:
            show = sys.stderr.isatty()
        if not show or not self.ranks.main:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=steps, initial=progress.step, leave=False, file=sys.stderr,
                    desc=f"epoch {progress.epoch + 1}/{self.config.epochs}")

    def _plots(self, model, progress: Progress, val: dict) -> None:
        def draw() -> dict:
            self.task.plots(self.out, progress.history, val,
                            lambda n: self.samples(model, self.data.val, n))
            return {}
        self._write(draw)
        self.written += [name for name in self.task.outputs if name not in self.written]

    def _save_resumable(self, net, optimizer, schedule, scaler, progress: Progress) -> None:
        if self.out is None or not self.ranks.main:
            return
        self._write(lambda: {STATE_FILE: self._state_bytes(net, optimizer, schedule, scaler,
                                                           progress)})

    def _state_bytes(self, net, optimizer, schedule, scaler, progress: Progress) -> bytes:
        return state_bytes({
            "model": {k: v.detach().cpu() for k, v in _plain(net).state_dict().items()},
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(), "rng": torch.get_rng_state(),
            "progress": json.dumps(progress.to_dict()), "fingerprint": json.dumps(
                self.fingerprint, sort_keys=True), **({"ema": {
                    k: v.detach().cpu() for k, v in self.average.module.state_dict().items()}}
                    if self.average is not None else {})})

    def _restore(self, folder: Path, model, optimizer, schedule, scaler,
                 steps: int) -> Progress:
        """The saved state, checked field by field (state.py) before any of it is used."""
        path = folder / STATE_FILE
        state = saved_state.read_state(path)
        try:
            fingerprint, saved = saved_state.check_top(state)
            changed = saved_state.fingerprint_differences(fingerprint, self.fingerprint)
            if changed:
                raise _error(f"{folder} was trained with another setup: "
                             f"{'; '.join(changed[:3])}", help="resume with the same spec, "
                             "data and settings, or train afresh into a new --out folder")
            saved_state.check_progress(saved, Progress, steps)
            progress = Progress(**saved)
            saved_state.check_model(state["model"], _plain(model).state_dict())
            if self.average is not None:
                saved_state.check_model(state.get("ema"), self.average.module.state_dict(),
                                        "ema")
            self._unfreeze_if_due(progress, optimizer)  # as it was when the state was saved
            saved_state.check_optimizer(state["optimizer"], optimizer)
            saved_state.check_schedule(state["schedule"], schedule,
                                       progress.epoch * steps + progress.step)
            saved_state.check_scaler(state["scaler"], scaler)
            saved_state.check_rng(state["rng"])
            for part, load in (("model", model.load_state_dict),
                               ("optimizer", optimizer.load_state_dict),
                               ("schedule", schedule.load_state_dict),
                               ("scaler", scaler.load_state_dict),
                               ("rng", torch.set_rng_state),
                               *((("ema", self.average.module.load_state_dict),)
                                 if self.average is not None else ())):
                try:
                    load(state[part])
                except Exception as exc:  # noqa: BLE001 - what the checks above missed
                    raise saved_state.NotAStateError(f"its `{part}` does not load "
                                                f"({str(exc).splitlines()[0]})") from None
        except saved_state.NotAStateError as exc:
            raise saved_state.not_a_state(path, str(exc)) from None
        self.resumed = True
        if self.average is not None:
            self.average.updates = progress.epoch * steps + progress.step
        return progress

    @contextmanager
    def _stop_signals(self):
        """The first Ctrl-C (or SIGTERM) finishes the current step and saves a resumable
        state; a second one stops at once."""
        if (self.out is None and self.claim is None) or not _in_main_thread():
            yield
            return

        def handler(signum, frame):
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = signum
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self.log(f"{name}: stopping after this step ({name} again to stop now)")
        previous = {name: signal.signal(getattr(signal, name), handler)
                    for name in STOP_SIGNALS if hasattr(signal, name)}
        try:
            yield
        finally:
            for name, old in previous.items():
                signal.signal(getattr(signal, name), old)

    def _summary(self, progress: Progress) -> dict:
        last = progress.history[-1] if progress.history else {}
        return {"epochs": len(progress.history), "best_epoch": progress.best_epoch,
                "history": progress.history, **{k: v for k, v in last.items() if k not in (
                    "epoch", "lr", "seconds")},
                "out": str(self.out) if self.out else None, "world": self.ranks.world}


class OnnxModule(nn.Module):
    """An ONNX model run by onnxruntime (CPU), called as a module: `eval --onnx`."""

    def __init__(self, model: str | bytes):
        super().__init__()
        from ..runtime import create_session
        self.session = create_session(model, "cpu").session
        self.input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().cpu().float().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: x})[0])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise _error("--device cuda: no CUDA device is available",
                     help="use --device cpu (or auto)")
    if device not in ("cpu", "cuda"):
        raise _error(f"unknown device `{device}`", help="auto, cpu or cuda")
    return torch.device(device)


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _in_order(count: int, batch: int) -> list[list[int]]:
    return [list(range(i, min(i + batch, count))) for i in range(0, count, batch)]


def _epoch_line(record: dict, epochs: int, task) -> str:
    return (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f} | val loss {record['val_loss']:.4f} "
            f"{task.epoch_line(record)} | lr {record['lr']:.3g} | {record['seconds']:.1f} s")
