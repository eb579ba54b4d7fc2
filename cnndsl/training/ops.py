"""Augmentation ops the `augment:` setting accepts, with their arguments and defaults.
Kept free of torch so the checker can validate a spec without importing it."""

AUGMENT_OPS: dict[str, dict[str, object]] = {
    "random_crop": {"padding": 4},
    "flip": {"p": 0.5},
    "rotate": {"degrees": 10},
    "scale": {"low": 0.75, "high": 1.25},
    "color_jitter": {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0},
    "normalize": {"mean": 0.5, "std": 0.5},
}
