"""Training throughput: cnndsl's loop against a minimal hand-written PyTorch loop.

    python benchmarks/train_bench.py [--rounds N]

Same model (compiled from the spec), same data held in memory, same batch, optimizer and
loss, same threads; only the loop differs. Rounds alternate between the two and the
median images/s of each is printed with their ratio. Validation is left out of both (it is
a separate pass in cnndsl). A third line per model shows what the augmentation pipeline
(torchvision v2, one draw per image) costs on top.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import cnndsl
from cnndsl.training.data import Data, Dataset, load_data
from cnndsl.training.loop import Progress, Trainer, build_optimizer, build_schedule
from cnndsl.training.run import train_config

ROOT = Path(__file__).resolve().parent.parent
RESNET = """
network resnet18_64(classes: int = 10) {
    input image: 3 x 64 x 64
    conv(64, 7, stride=2, padding=3, bias=false) -> batchnorm -> relu
    maxpool(3, stride=2, padding=1)
    layer1: basic_stage(64, 2)
    layer2: basic_stage(128, 2, stride=2)
    layer3: basic_stage(256, 2, stride=2)
    layer4: basic_stage(512, 2, stride=2)
    global_avgpool -> flatten -> fc: linear(classes)
}
train resnet18_64() {
    optimizer: sgd(lr=0.05, momentum=0.9)
    batch: 32
    augment: random_crop(padding=4) -> flip
}
"""


def synthetic(n: int, shape, classes: int) -> Data:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, *shape, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    names = [str(i) for i in range(classes)]
    return Data(Dataset(images, labels, names), Dataset(images[:64], labels[:64], names),
                "synthetic")


def hand_loop(model, config, data: Data) -> float:
    """What a user writes by hand: shuffle, forward, loss, backward, step."""
    torch.manual_seed(0)
    module = model.to_torch().train()
    optimizer = build_optimizer(config, module.parameters())
    images, labels = data.train.images, data.train.labels
    start = time.perf_counter()
    order = torch.randperm(len(labels))
    for i in range(0, len(order), config.batch):
        index = order[i:i + config.batch]
        loss = F.cross_entropy(module(images[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(labels) / (time.perf_counter() - start)


def cnndsl_loop(model, config, data: Data) -> float:
    """One training epoch of cnndsl's loop (sharding, loss scaling, NaN check, schedule,
    progress bookkeeping), without validation."""
    torch.manual_seed(0)
    module = model.to_torch()
    trainer = Trainer(config, data, module, device="cpu", progress_bar=False,
                      log=lambda line: None)
    optimizer = build_optimizer(config, module.parameters())
    steps = -(-len(data.train.labels) // config.batch)
    schedule = build_schedule(config, optimizer, steps)
    scaler = torch.amp.GradScaler(enabled=False)
    start = time.perf_counter()
    trainer._train_epoch(module, optimizer, schedule, scaler, Progress(), steps)
    return len(data.train.labels) / (time.perf_counter() - start)


def compare(title: str, model, data: Data, rounds: int) -> None:
    plain = train_config(model, {}).model_copy(update={"augment": ()})
    augmented = train_config(model, {})
    hand, ours, aug = [], [], []
    for _ in range(rounds):  # interleaved, so drifts of a shared host hit all alike
        hand.append(hand_loop(model, plain, data))
        ours.append(cnndsl_loop(model, plain, data))
        aug.append(cnndsl_loop(model, augmented, data))
    h, o, a = (statistics.median(x) for x in (hand, ours, aug))
    print(f"{title}: {len(data.train.labels)} images, batch {plain.batch}, "
          f"{plain.optimizer.name}, {torch.get_num_threads()} threads")
    print(f"  hand-written loop       {h:8.1f} images/s")
    print(f"  cnndsl train loop       {o:8.1f} images/s   {o / h:.3f}x the hand loop")
    print(f"  ... with augmentation   {a:8.1f} images/s   {a / h:.3f}x "
          f"({' -> '.join(op.name for op in augmented.augment)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    digits = cnndsl.load(ROOT / "examples" / "train_digits.cnn")
    compare("digits_cnn (examples/train_digits.cnn) on digits", digits,
            load_data("digits", (1, 16, 16)), args.rounds)
    resnet = cnndsl.loads(RESNET)
    compare("resnet18 at 3 x 64 x 64 on synthetic data", resnet,
            synthetic(512, (3, 64, 64), 10), args.rounds)


if __name__ == "__main__":
    main()
