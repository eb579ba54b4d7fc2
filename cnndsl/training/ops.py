"""Augmentation ops the `augment:` setting accepts, with their arguments and defaults, and
the one place they become torchvision.transforms.v2 steps (for every task: an image alone,
an image with its mask, an image with its boxes). Free of torch at import time, so the
checker can validate a spec without importing it."""

AUGMENT_OPS: dict[str, dict[str, object]] = {
    "random_crop": {"padding": 4},
    "flip": {"p": 0.5},
    "rotate": {"degrees": 10},
    "scale": {"low": 0.75, "high": 1.25},
    "color_jitter": {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0},
    "normalize": {"mean": 0.5, "std": 0.5},
}


def v2_transforms(ops: list[tuple[str, dict]], size, fill=0.0) -> list:
    """The random ops as transforms.v2 steps, in the spec's order; `normalize` is not one
    (deterministic, applied by evaluation too). `fill`: the value (or a value per
    tv_tensors type) of pixels brought in from outside the image."""
    from torchvision.transforms import v2
    steps = []
    for name, args in ops:
        if name == "random_crop":
            steps.append(v2.RandomCrop(list(size), padding=int(args["padding"]), fill=fill))
        elif name == "flip":
            steps.append(v2.RandomHorizontalFlip(p=args["p"]))
        elif name == "rotate":
            steps.append(v2.RandomRotation(args["degrees"], fill=fill))
        elif name == "scale":
            steps.append(v2.RandomAffine(degrees=0, scale=(args["low"], args["high"]),
                                         fill=fill))
        elif name == "color_jitter":
            steps.append(v2.ColorJitter(brightness=args["brightness"],
                                        contrast=args["contrast"],
                                        saturation=args["saturation"], hue=args["hue"]))
        elif name != "normalize":
            raise ValueError(f"unknown augmentation {name}")
    return steps
