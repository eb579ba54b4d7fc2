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
    "ZeroPad2d": "pad", "ConstantPad2d": "pad", "cat": "concat", "Concatenate": "concat",
    "interpolate": "upsample", "Softmax2d": "softmax",
    # tensor methods: reshape is PyTorch's view (and reshape); one name for each operation
    "view": "reshape", "swapaxes": "transpose", "chunk": "split", "subtract": "sub",
    "divide": "div",
}
# other functions whose names read like one of ours once the dimension is dropped
NOT_LAYERS = {"dropout1d", "dropout2d", "dropout3d", "conv1d", "conv3d", "maxpool1d",
              "maxpool3d", "avgpool1d", "avgpool3d", "batchnorm3d", "convtranspose1d",
              "convtranspose3d", "adaptiveavgpool1d", "adaptiveavgpool3d"}
# torch.nn's modules and torch.nn.functional's functions (tests/test_newuser.py compares
# this with torch's): an unknown name that is one of these is another function than any
# cnndsl layer with a near name (`hard_sigmoid` is not `sigmoid`), so nothing is suggested
_TORCH_TEXT = """
AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveLogSoftmaxWithLoss
AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d AlphaDropout AvgPool1d AvgPool2d
AvgPool3d BCELoss BCEWithLogitsLoss BatchNorm1d BatchNorm2d BatchNorm3d Bilinear CELU CTCLoss
ChannelShuffle CircularPad1d CircularPad2d CircularPad3d ConstantPad1d ConstantPad2d
ConstantPad3d Container Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d
CosineEmbeddingLoss CosineSimilarity CrossEntropyLoss CrossMapLRN2d DataParallel Dropout
Dropout1d Dropout2d Dropout3d ELU Embedding EmbeddingBag FeatureAlphaDropout Flatten Fold
FractionalMaxPool2d FractionalMaxPool3d GELU GLU GRU GRUCell GaussianNLLLoss GroupNorm
Hardshrink Hardsigmoid Hardswish Hardtanh HingeEmbeddingLoss HuberLoss Identity
InstanceNorm1d InstanceNorm2d InstanceNorm3d KLDivLoss L1Loss LPPool1d LPPool2d LPPool3d LSTM
LSTMCell LayerNorm LazyBatchNorm1d LazyBatchNorm2d LazyBatchNorm3d LazyConv1d LazyConv2d
LazyConv3d LazyConvTranspose1d LazyConvTranspose2d LazyConvTranspose3d LazyInstanceNorm1d
LazyInstanceNorm2d LazyInstanceNorm3d LazyLinear LeakyReLU Linear LinearCrossEntropyLoss
LocalResponseNorm LogSigmoid LogSoftmax MSELoss MarginRankingLoss MaxPool1d MaxPool2d
MaxPool3d MaxUnpool1d MaxUnpool2d MaxUnpool3d Mish Module ModuleDict ModuleList
MultiLabelMarginLoss MultiLabelSoftMarginLoss MultiMarginLoss MultiheadAttention NLLLoss
NLLLoss2d PReLU PairwiseDistance ParameterDict ParameterList PixelShuffle PixelUnshuffle
PoissonNLLLoss RMSNorm RNN RNNBase RNNCell RNNCellBase RReLU ReLU ReLU6 ReflectionPad1d
ReflectionPad2d ReflectionPad3d ReplicationPad1d ReplicationPad2d ReplicationPad3d SELU
Sequential SiLU Sigmoid SmoothL1Loss SoftMarginLoss Softmax Softmax2d Softmin Softplus
Softshrink Softsign SyncBatchNorm Tanh Tanhshrink Threshold Transformer TransformerDecoder
TransformerDecoderLayer TransformerEncoder TransformerEncoderLayer TripletMarginLoss
TripletMarginWithDistanceLoss Unflatten Unfold Upsample UpsamplingBilinear2d
UpsamplingNearest2d ZeroPad1d ZeroPad2d ZeroPad3d
adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d
adaptive_max_pool1d_with_indices adaptive_max_pool2d adaptive_max_pool2d_with_indices
adaptive_max_pool3d adaptive_max_pool3d_with_indices affine_grid alpha_dropout avg_pool1d
avg_pool2d avg_pool3d batch_norm bilinear binary_cross_entropy
binary_cross_entropy_with_logits celu celu_ channel_shuffle conv1d conv2d conv3d conv_tbc
conv_transpose1d conv_transpose2d conv_transpose3d cosine_embedding_loss cosine_similarity
cross_entropy ctc_loss dropout dropout1d dropout2d dropout3d elu elu_ embedding embedding_bag
feature_alpha_dropout fold fractional_max_pool2d fractional_max_pool2d_with_indices
fractional_max_pool3d fractional_max_pool3d_with_indices gaussian_nll_loss gelu glu
grid_sample group_norm grouped_mm gumbel_softmax hardshrink hardsigmoid hardswish hardtanh
hardtanh_ hinge_embedding_loss huber_loss instance_norm interpolate kl_div l1_loss layer_norm
leaky_relu leaky_relu_ linear linear_cross_entropy local_response_norm log_softmax logsigmoid
lp_pool1d lp_pool2d lp_pool3d margin_ranking_loss max_pool1d max_pool1d_with_indices
max_pool2d max_pool2d_with_indices max_pool3d max_pool3d_with_indices max_unpool1d
max_unpool2d max_unpool3d mish mse_loss multi_head_attention_forward multi_margin_loss
multilabel_margin_loss multilabel_soft_margin_loss native_channel_shuffle nll_loss normalize
one_hot pad pairwise_distance pdist pixel_shuffle pixel_unshuffle poisson_nll_loss prelu relu
relu6 relu_ rms_norm rrelu rrelu_ scaled_dot_product_attention scaled_grouped_mm scaled_mm
selu selu_ sigmoid silu smooth_l1_loss soft_margin_loss softmax softmin softplus softshrink
softsign tanh tanhshrink threshold threshold_ triplet_margin_loss
triplet_margin_with_distance_loss unfold upsample upsample_bilinear upsample_nearest
"""
TORCH_NAMES = frozenset(_TORCH_TEXT.split())
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


def normal(word: str) -> str:
    """How a layer's name reads whatever the spelling: `Max_Pool2d` -> `maxpool`."""
    word = word.lower().replace("_", "")
    return word[:-2] if word.endswith("2d") and word not in NOT_LAYERS else word


_TORCH_NORMAL = frozenset(normal(n) for n in TORCH_NAMES)
_HABITS_NORMAL = {normal(k): v for k, v in LAYER_HABITS.items()}


def layer_help(word: str, candidates: Iterable[str], layers: Iterable[str] = ()) -> str | None:
    """Help for an unknown layer name: the .cnn spelling of a PyTorch habit (`ReLU`,
    `max_pool2d`); for one of PyTorch's other functions no near miss (`hard_sigmoid` is not
    `sigmoid`); else a did-you-mean that is a misspelling, not another word around it."""
    how, name = layer_guess(word, candidates, layers)
    if how == "habit":
        return f"in cnndsl it is `{name}`"
    if how == "other":
        return f"`{word}` is not a cnndsl layer (and not the same function as any that is)"
    return f"did you mean `{name}`?" if name else None


def layer_guess(word: str, candidates: Iterable[str],
                layers: Iterable[str] = ()) -> tuple[str, str | None]:
    """What an unknown layer name most likely is: ("habit", the .cnn name), ("other", None)
    for another PyTorch function, ("typo", the nearest name) or ("", None)."""
    if word in LAYER_HABITS:
        return "habit", LAYER_HABITS[word]
    key = normal(word)
    ours = {normal(op): op for op in layers}
    if key not in NOT_LAYERS and (key in ours or key in _HABITS_NORMAL):
        return "habit", ours.get(key) or _HABITS_NORMAL[key]
    if key in _TORCH_NORMAL or key in NOT_LAYERS:
        return "other", None
    near = difflib.get_close_matches(word, [c for c in candidates
                                            if not _around(key, normal(c))], n=1, cutoff=0.6)
    return ("typo", near[0]) if near else ("", None)


def _around(word: str, candidate: str) -> bool:
    """`hardsigmoid` around `sigmoid`, `pool` inside `maxpool`: a word added or removed
    (two letters or more), which makes another function, not a typo."""
    shorter, longer = sorted((word, candidate), key=len)
    return len(longer) - len(shorter) >= 2 and shorter in longer


def argument_help(word: str, candidates: Iterable[str]) -> str | None:
    """Help for an unknown argument name: a habit's .cnn spelling, or a did-you-mean."""
    candidates = list(candidates)
    if word in ARG_WHY and (ARG_HABITS.get(word) not in candidates):
        return ARG_WHY[word]
    if ARG_HABITS.get(word) in candidates:
        return f"in cnndsl it is `{ARG_HABITS[word]}`"
    return did_you_mean(word, candidates)
