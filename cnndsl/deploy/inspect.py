"""A look inside a network on one image: a layer's activation maps, the first conv
layer's filters, and Grad-CAM (Selvaraju et al., 2017) for the predicted class, with
torch hooks (a dozen lines; the grad-cam package would add OpenCV and ttach for the same).

Python: `inspect_image(model, image, layer, weights=...)` returns an `Inspection` that a
notebook shows as a PNG; `.save(path)` writes the same figure."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..diagnostics import CnnError, Diagnostic


@dataclass
class Inspection:
    image: torch.Tensor  # C x H x W in [0, 1], as decoded and resized (before normalising)
    layer: str
    maps: torch.Tensor  # the layer's output for the image: C' x H' x W'
    filters: torch.Tensor | None  # the first conv's weights: O x I x kH x kW
    filters_layer: str | None
    cam: torch.Tensor  # H x W in [0, 1]: Grad-CAM at `layer` for `predicted`
    predicted: int
    predicted_name: str
    probability: float

    def figure(self, max_maps: int = 32):
        return draw(self, max_maps)

    def save(self, path: str | Path) -> None:
        from ..atomic import write_bytes
        write_bytes(path, self._png())

    def _png(self) -> bytes:
        import matplotlib.pyplot as plt
        fig = self.figure()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        return buffer.getvalue()

    def _repr_png_(self) -> bytes:
        return self._png()


def layers_with_outputs(module) -> list[str]:
    """Layers a hook can see (those that are torch modules, at their spec paths)."""
    return [name for name, _, _, m in module._steps if m is not None]


def inspect_image(model, image: str | Path, layer: str, *, weights=None,
                  weights_from: str | None = None) -> Inspection:
    from ..training.data import eval_transform
    from ..training.run import build_module
    from .predict import described_spec
    config = model.train_config()
    info = described_spec(model, None, weights)
    module = build_module(model, config, weights, weights_from, lambda line: None).eval()
    known = layers_with_outputs(module)
    if layer not in known:
        from ..suggest import did_you_mean
        hint = did_you_mean(layer, known)
        raise CnnError([Diagnostic(code="E-name", message=f"no layer `{layer}` in "
                                   f"{model.name} to look at" + (f"; {hint}" if hint else ""),
                                   help="layers: " + ", ".join(known[:40]))])
    from .predict import decode_images
    if not Path(image).is_file():  # a folder, a FIFO or a device: one image file only
        raise CnnError([Diagnostic(code="E-data", message=f"{image} is not an image file")])
    skipped: list = []
    decoded = decode_images([Path(image)], info.shape, skipped, info.max_pixels)
    if skipped:
        raise CnnError([Diagnostic(code="E-data", message=f"cannot read {skipped[0][0]}: "
                                   f"{skipped[0][1]}")])
    x = eval_transform(info.normalize_ops())(decoded.images)
    maps, cam, logits = grad_cam(module, x, layer)
    probs = torch.softmax(logits.double(), -1)[0]
    best = int(probs.argmax())
    first = first_conv(module)
    return Inspection(decoded.images[0], layer, maps, first[1] if first else None,
                      first[0] if first else None, cam, best, info.class_name(best),
                      float(probs[best]))


def grad_cam(module, x: torch.Tensor, layer: str, target: int | None = None):
    """(the layer's output, Grad-CAM for `target` or the predicted class, the logits):
    channel weights are the spatial means of d score / d activation; the map is the ReLU
    of the weighted sum, upsampled (bilinear) to the input and scaled to [0, 1]."""
    seen: dict = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        seen["out"] = output
        return output.clone()  # a later in-place op (relu) leaves the kept tensor as it was
    handle = module.get_submodule(layer).register_forward_hook(keep)
    try:
        x = x.clone().requires_grad_(True)  # gradients reach every layer, frozen or not
        logits = module(x)
    finally:
        handle.remove()
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    target = int(logits[0].argmax()) if target is None else target
    module.zero_grad(set_to_none=True)
    logits[0, target].backward()
    activation, grad = seen["out"][0].detach(), seen["out"].grad[0]
    if activation.ndim != 3:
        raise CnnError([Diagnostic(code="E-shape", message=f"`{layer}` gives "
                                   f"{' x '.join(map(str, activation.shape))}, not maps "
                                   "(C x H x W)", help="choose a conv, norm, activation "
                                   "or pooling layer")])
    weights = grad.mean(dim=(1, 2))
    cam = F.relu((weights[:, None, None] * activation).sum(0))
    cam = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear",
                        align_corners=False)[0, 0]
    top = cam.max()
    cam = cam / top if top > 0 else cam
    return activation, cam.detach(), logits.detach()


def first_conv(module) -> tuple[str, torch.Tensor] | None:
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Conv2d):
            return name, sub.weight.detach().clone()
    return None


def _grid(count: int) -> tuple[int, int]:
    cols = min(8, count)
    return (count + cols - 1) // cols, cols


def draw(result: Inspection, max_maps: int = 32):
    """Three panels: the image with its Grad-CAM, the activation maps, the filters."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    maps = result.maps[:max_maps]
    filters = result.filters[:max_maps] if result.filters is not None else None
    map_rows, map_cols = _grid(len(maps))
    f_rows, f_cols = _grid(len(filters)) if filters is not None else (0, 1)
    fig = plt.figure(figsize=(11, 3.2 + 1.2 * (map_rows + f_rows)), layout="constrained")
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[3, map_rows * 1.2 + 0.4,
                                                              max(f_rows, 1) * 1.2 + 0.4])
    image = result.image.permute(1, 2, 0).numpy()
    grey = image.shape[2] == 1
    shown = image[..., 0] if grey else image
    left, right = top.subplots(1, 2)
    left.imshow(shown, cmap="gray" if grey else None, vmin=0, vmax=1)
    left.set_title("input (as the network sees it, before normalising)", fontsize=9)
    right.imshow(shown, cmap="gray" if grey else None, vmin=0, vmax=1)
    right.imshow(result.cam.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    right.set_title(f"Grad-CAM at {result.layer}: {result.predicted_name} "
                    f"({result.probability:.2f})", fontsize=9)
    for ax in (left, right):
        ax.axis("off")
    middle.suptitle(f"activation maps of {result.layer} ({len(maps)} of "
                    f"{len(result.maps)} channels, {result.maps.shape[1]} x "
                    f"{result.maps.shape[2]})", fontsize=9)
    _tiles(middle, [m.numpy() for m in maps], map_rows, map_cols, "viridis")
    if filters is not None:
        bottom.suptitle(f"filters of {result.filters_layer} ({len(filters)} of "
                        f"{len(result.filters)}, {filters.shape[2]} x {filters.shape[3]}"
                        f"{_inputs_note(filters.shape[1])})",
                        fontsize=9)
        _tiles(bottom, [_filter_image(f) for f in filters], f_rows, f_cols, "gray")
    return fig


def _inputs_note(inputs: int) -> str:
    return ", RGB" if inputs == 3 else "" if inputs == 1 else f", mean of {inputs} inputs"


def _filter_image(weight: torch.Tensor):
    """An RGB filter as colour (scaled to [0, 1]); otherwise the mean over its inputs."""
    if weight.shape[0] == 3:
        low, high = weight.min(), weight.max()
        return ((weight - low) / (high - low + 1e-12)).permute(1, 2, 0).numpy()
    return weight.mean(0).numpy()


def _tiles(fig, images, rows: int, cols: int, cmap: str) -> None:
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap=cmap, interpolation="nearest")
            ax.set_title(str(i), fontsize=7)
