"""PNG plots of a training run (matplotlib, no display needed), written atomically."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: list[dict], path: str | Path,
                 metric: tuple[str, ...] | None = None) -> None:
    """Loss (train, val) and accuracy (train, val) per epoch, side by side; `metric`
    (title, key): a third curve beside the accuracy (validation mIoU)."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    figure, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation")
    loss.set(title="loss", xlabel="epoch", ylabel="loss")
    accuracy.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train")
    title = "accuracy"
    if all("val_accuracy" in r for r in history):  # detection has none: its mAP only
        accuracy.plot(epochs, [r["val_accuracy"] for r in history], "s-", label="validation")
    if metric is not None:
        accuracy.plot(epochs, [r[metric[1]] for r in history], "^-",
                      label=f"validation {metric[0]}")
        title = f"{metric[2] if len(metric) > 2 else 'pixel accuracy'} and {metric[0]}"
    accuracy.set(title=title, xlabel="epoch", ylabel="accuracy")
    for axes in (loss, accuracy):
        axes.grid(alpha=0.3)
        axes.legend()
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    _save(figure, path)


def palette(classes: int):
    """Pascal VOC's colour map (class 0 black), as an array of RGB bytes per class."""
    import numpy as np
    colours = np.zeros((256, 3), np.uint8)
    for c in range(256):
        r = g = b = 0
        value = c
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours[c] = (r, g, b)
    return colours


def overlay(image, mask, alpha: float = 0.7):
    """An image (C x H x W in [0, 1]) with its mask's classes coloured over it (H x W x 3
    floats); background (0) left clear, the ignore index white."""
    import numpy as np
    rgb = np.asarray(image, dtype=np.float32)
    rgb = np.repeat(rgb, 3, 0) if rgb.shape[0] == 1 else rgb[:3]
    rgb = rgb.transpose(1, 2, 0)
    mask = np.asarray(mask).astype(np.int64)
    colours = palette(256).astype(np.float32) / 255
    coloured = colours[np.clip(mask, 0, 255)]
    coloured[mask == 255] = 1.0
    mixed = np.where((mask > 0)[..., None], (1 - alpha) * rgb + alpha * coloured, rgb)
    return np.clip(mixed, 0, 1)


def plot_masks(images, truth, predicted, classes: int, path: str | Path) -> None:
    """Validation images in a row each: the image, the true mask over it, the predicted."""
    plt = _pyplot()
    rows = len(images)
    figure, axes = plt.subplots(max(rows, 1), 3, figsize=(7.5, 2.5 * max(rows, 1)), dpi=100,
                                squeeze=False)
    for i in range(rows):
        for j, (panel, title) in enumerate(((images[i], "image"),
                                            (overlay(images[i], truth[i]), "true"),
                                            (overlay(images[i], predicted[i]), "predicted"))):
            shown = panel if j else overlay(images[i], truth[i] * 0)
            axes[i][j].imshow(shown, interpolation="nearest")
            axes[i][j].set_axis_off()
            if i == 0:
                axes[i][j].set_title(title)
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
    classes = [_label(name) for name in classes]
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


def _label(name: str) -> str:
    """Text matplotlib draws as written: one line, `$` not read as mathtext."""
    from .metrics import one_line
    return one_line(name).replace("$", r"\$")


def _save(figure, path: str | Path) -> None:
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)
