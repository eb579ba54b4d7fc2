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


class Narrow(nn.Module):
    """Indices start .. start + length - 1 along one axis (the batch axis is 0)."""

    def __init__(self, dim, start, length):
        super().__init__()
        self.dim, self.start, self.length = dim, start, length

    def forward(self, x):
        return x.narrow(self.dim, self.start, self.length)


class Reshape(nn.Module):
    """The same values in another shape; the batch axis stays as it is."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


class Permute(nn.Module):
    """Reorders the axes after the batch axis: output axis i is input axis dims[i]."""

    def __init__(self, dims):
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x):
        return x.permute(0, *(d + 1 for d in self.dims))


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class AnchorPoints(nn.Module):
    """The centre of every cell of the input's grid, 2 x H*W (x, then y), per image."""

    def __init__(self, height, width, offset=0.5):
        super().__init__()
        self.height, self.width, self.offset = height, width, offset

    def forward(self, x):
        ys = torch.arange(self.height, dtype=x.dtype, device=x.device) + self.offset
        xs = torch.arange(self.width, dtype=x.dtype, device=x.device) + self.offset
        ys, xs = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((xs, ys)).reshape(2, -1)
        return grid.expand(x.shape[0], 2, self.height * self.width)


class AnchorStrides(nn.Module):
    """1 x H*W filled with the stride of the input's grid, per image."""

    def __init__(self, height, width, stride):
        super().__init__()
        self.cells, self.stride = height * width, float(stride)

    def forward(self, x):
        return torch.full((x.shape[0], 1, self.cells), self.stride, dtype=x.dtype,
                          device=x.device)


CLASSES = {cls.__name__: cls for cls in (LayerNorm2d, LayerScale, StochasticDepth, Crop,
                                         ChannelSlice, Narrow, Reshape, Permute, Exp, Log,
                                         AnchorPoints, AnchorStrides)}
