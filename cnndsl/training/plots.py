"""PNG plots of a training run (matplotlib, no display needed), written atomically."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: list[dict], path: str | Path) -> None:
    """Loss (train, val) and accuracy (train, val) per epoch, side by side."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    figure, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation")
    loss.set(title="loss", xlabel="epoch", ylabel="loss")
    accuracy.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train")
    accuracy.plot(epochs, [r["val_accuracy"] for r in history], "s-", label="validation")
    accuracy.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    for axes in (loss, accuracy):
        axes.grid(alpha=0.3)
        axes.legend()
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    _save(figure, path)


def plot_confusion(matrix: list[list[int]], classes: list[str], path: str | Path) -> None:
    """The confusion matrix as a heat map with the count in every cell."""
    plt = _pyplot()
    n = len(classes)
    size = min(16, max(4, 0.5 * n + 2))
    figure, axes = plt.subplots(figsize=(size + 1, size), dpi=100)
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set(xticks=range(n), yticks=range(n), xticklabels=classes, yticklabels=classes,
             xlabel="predicted", ylabel="true", title="confusion matrix")
    plt.setp(axes.get_xticklabels(), rotation=45 if max(map(len, classes)) > 3 else 0,
             ha="right" if max(map(len, classes)) > 3 else "center")
    if n <= 30:
        top = max((max(row) for row in matrix), default=0)
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                axes.text(j, i, str(value), ha="center", va="center", fontsize=8,
                          color="white" if value > top / 2 else "black")
    figure.tight_layout()
    _save(figure, path)


def _save(figure, path: str | Path) -> None:
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)
