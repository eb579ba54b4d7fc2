"""Modules PyTorch has no class for. The in-memory module uses them from here; generated
source carries the text of those it uses (it imports only torch), so both are one code."""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """Layer normalisation over the channels of each pixel (torchvision's ConvNeXt)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """A learnable factor per channel (ConvNeXt's layer scale)."""

    def __init__(self, shape, init=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full(shape, float(init)))

    def forward(self, x):
        return x * self.weight


class StochasticDepth(nn.Module):
    """In training, drops a sample's whole input (`row`) or the batch's (`batch`) with
    probability p and scales what stays by 1 / (1 - p); the identity at inference."""

    def __init__(self, p, mode="row"):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        shape = [x.shape[0]] + [1] * (x.dim() - 1) if self.mode == "row" else [1] * x.dim()
        noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(survival)
        return x * noise.div_(survival)


class Crop(nn.Module):
    """A window of the image: rows top .. top + height, columns left .. left + width."""

    def __init__(self, top, left, height, width):
        super().__init__()
        self.top, self.left, self.height, self.width = top, left, height, width

    def forward(self, x):
        return x[:, :, self.top:self.top + self.height, self.left:self.left + self.width]


class ChannelSlice(nn.Module):
    """Channels start .. stop - 1."""

    def __init__(self, start, stop):
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x):
        return x[:, self.start:self.stop]


CLASSES = {cls.__name__: cls for cls in (LayerNorm2d, LayerScale, StochasticDepth, Crop,
                                         ChannelSlice)}
