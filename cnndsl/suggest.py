"""Did-you-mean suggestions for misspelt names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean `{matches[0]}`?" if matches else None


# PyTorch's (and other frameworks') spellings, and what they are in a .cnn file.
LAYER_HABITS = {
    "Conv2d": "conv", "conv2d": "conv", "Conv": "conv", "convolution": "conv",
    "ConvTranspose2d": "conv_transpose", "deconv": "conv_transpose",
    "Linear": "linear", "dense": "linear", "Dense": "linear", "fc": "linear",
    "BatchNorm2d": "batchnorm", "BatchNorm1d": "batchnorm", "batch_norm": "batchnorm",
    "bn": "batchnorm", "BatchNorm": "batchnorm",
    "MaxPool2d": "maxpool", "max_pool": "maxpool", "max_pool2d": "maxpool",
    "AvgPool2d": "avgpool", "avg_pool": "avgpool", "avg_pool2d": "avgpool",
    "AdaptiveAvgPool2d": "adaptive_avgpool", "GlobalAveragePooling2D": "global_avgpool",
    "Dropout": "dropout", "Flatten": "flatten", "ReLU": "relu", "ReLU6": "relu6",
    "GELU": "gelu", "SiLU": "silu", "swish": "silu", "Swish": "silu", "Hardswish": "hardswish",
    "hard_swish": "hardswish", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax",
    "LogSoftmax": "log_softmax", "LeakyReLU": "leaky_relu", "ELU": "elu",
    "Identity": "identity", "LocalResponseNorm": "lrn", "Upsample": "upsample",
    "ZeroPad2d": "pad", "cat": "concat", "Concatenate": "concat",
}
# other functions, not just other spellings: never suggest a near name for these
NOT_LAYERS = {"hardsigmoid", "Hardsigmoid", "mish", "Mish", "selu", "SELU", "softplus",
              "prelu", "PReLU", "hardtanh", "layernorm", "LayerNorm", "groupnorm",
              "GroupNorm", "instancenorm", "InstanceNorm2d", "dropout2d", "Dropout2d"}
ARG_HABITS = {
    "strides": "stride", "kernel_size": "kernel", "pool_size": "kernel", "filters": None,
    "in_channels": None, "in_features": None, "num_features": None, "inplace": None,
    "padding_mode": None, "use_bias": "bias", "rate": "p", "negative_slope": "slope",
    "dilation_rate": "dilation",
}
ARG_WHY = {
    "in_channels": "input channels are inferred: drop it",
    "in_features": "input features are inferred: drop it",
    "num_features": "features are inferred: drop it",
    "filters": "the channel count is the first argument: conv(32, 3)",
    "inplace": "cnndsl's layers are never in place: drop it",
    "padding_mode": "padding is zeros; use `pad(...)` before the layer for a constant",
}
POSITIONAL_HABITS = {
    "conv": "input channels are inferred: PyTorch's Conv2d(3, 32, 3) is conv(32, 3); stride, "
            "padding and the rest are keywords",
    "conv_transpose": "input channels are inferred: ConvTranspose2d(64, 32, 2) is "
                      "conv_transpose(32, 2); stride and the rest are keywords",
    "linear": "input features are inferred: PyTorch's Linear(84, 10) is linear(10)",
    "batchnorm": "features are inferred: PyTorch's BatchNorm2d(32) is batchnorm; eps and "
                 "momentum are keywords",
}


def layer_help(word: str, candidates: Iterable[str]) -> str | None:
    """Help for an unknown layer name: the .cnn spelling of a PyTorch habit, no near
    miss for a different function, else a did-you-mean."""
    if word in LAYER_HABITS:
        return f"in cnndsl it is `{LAYER_HABITS[word]}`"
    if word in NOT_LAYERS:
        return f"`{word}` is not a cnndsl layer (and not the same function as any that is)"
    return did_you_mean(word, candidates)


def argument_help(word: str, candidates: Iterable[str]) -> str | None:
    """Help for an unknown argument name: a habit's .cnn spelling, or a did-you-mean."""
    candidates = list(candidates)
    if word in ARG_WHY and (ARG_HABITS.get(word) not in candidates):
        return ARG_WHY[word]
    if ARG_HABITS.get(word) in candidates:
        return f"in cnndsl it is `{ARG_HABITS[word]}`"
    return did_you_mean(word, candidates)
