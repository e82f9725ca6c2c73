"""FCN-8s in plain PyTorch, layer for layer as `fcn_jax.models.FCN(variant='fcn8s')`.

The reference of `train_step.py` and `gpu.py`. NCHW; VGG16 3x3 convs (padding 1) with
ReLU and 2x2 max-pooling at `width`, fc6 7x7 (padding 3, as the flax model's 'SAME'),
fc7 1x1, dropout 0.5 after both, zero-initialised 1x1 score layers on fc7, pool4 and
pool3, two learned 2x upsamplings (ConvTranspose2d, kernel 4, stride 2, padding 1,
initialised bilinear) and the fixed bilinear x8 upsampling computed exactly as
`fcn_jax.models.bilinear_upsample` does (two matmuls with the same interpolation
matrices). The score head runs in float32, also under autocast, as in the flax model.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from fcn_jax import models

NUM_CLASSES = 4


@functools.lru_cache(maxsize=None)
def _interpolation_matrix(size: int, factor: int, device: torch.device) -> torch.Tensor:
    # Made once per size and device: a copy from host memory every step would also make
    # every step wait for the GPU.
    return torch.from_numpy(models._interpolation_matrix(size, factor)).to(device)


def bilinear_upsample(y: torch.Tensor, factor: int) -> torch.Tensor:
    """NCHW twin of `fcn_jax.models.bilinear_upsample`: the same separable matmuls."""
    _, _, h, w = y.shape
    a_h = _interpolation_matrix(h, factor, y.device)
    a_w = _interpolation_matrix(w, factor, y.device)
    return torch.einsum('nchw,oh,pw->ncop', y, a_h, a_w)


def _upsample2() -> nn.ConvTranspose2d:
    # flax pads the stride-dilated input by upsample_padding(2) = 2 = k - 1 - p on each
    # side; torch's padding p = (k - f) // 2 = 1 gives the same 2x output.
    layer = nn.ConvTranspose2d(NUM_CLASSES, NUM_CLASSES, 4, stride=2, padding=1, bias=False)
    kernel = models.bilinear_kernel(2, NUM_CLASSES)  # HWIO, diagonal in I/O, symmetric
    layer.weight.data.copy_(torch.from_numpy(kernel.transpose(2, 3, 0, 1).copy()))
    return layer


class FCN8s(nn.Module):
    """FCN-8s on VGG16 at `width`, input [N, input_channels, H, W], logits [N, 4, H, W]."""

    def __init__(self, width: float, input_channels: int = 1, dropout_rate: float = 0.5) -> None:
        super().__init__()
        self.dropout_rate = dropout_rate
        self.convs = nn.ModuleDict()
        c_in = input_channels
        for names, channels in models.VGG16_BLOCKS:
            for name in names:
                c_out = models.scaled_channels(channels, width)
                self.convs[name] = nn.Conv2d(c_in, c_out, 3, padding=1)
                c_in = c_out
        fc = models.scaled_channels(models.FC_CHANNELS, width)
        self.fc6 = nn.Conv2d(c_in, fc, 7, padding=3)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.score_fr = nn.Conv2d(fc, NUM_CLASSES, 1)
        self.score_pool4 = nn.Conv2d(models.scaled_channels(512, width), NUM_CLASSES, 1)
        self.score_pool3 = nn.Conv2d(models.scaled_channels(256, width), NUM_CLASSES, 1)
        self.upscore2 = _upsample2()
        self.upscore_pool4 = _upsample2()
        for layer in (*self.convs.values(), self.fc6, self.fc7):
            nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')  # He-normal, as flax
            nn.init.zeros_(layer.bias)
        for layer in (self.score_fr, self.score_pool4, self.score_pool3):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pools = []
        for names, _ in models.VGG16_BLOCKS:
            for name in names:
                x = F.relu(self.convs[name](x))
            x = F.max_pool2d(x, 2, 2)
            pools.append(x)
        x = F.dropout(F.relu(self.fc6(x)), self.dropout_rate, self.training)
        x = F.dropout(F.relu(self.fc7(x)), self.dropout_rate, self.training)
        scores = [layer(y).float() for layer, y in (
            (self.score_fr, x), (self.score_pool4, pools[3]), (self.score_pool3, pools[2]))]
        with torch.autocast(x.device.type, enabled=False):
            y = self.upscore2(scores[0]) + scores[1]
            y = self.upscore_pool4(y) + scores[2]
            return bilinear_upsample(y, 8)


def load_flax_params(module: FCN8s, params: dict) -> None:
    """Copies flax FCN-8s params (HWIO kernels, numpy or jax arrays) into `module`."""
    def copy(target: torch.Tensor, value: np.ndarray) -> None:
        target.data.copy_(torch.from_numpy(np.array(value, np.float32)))

    convs = {**dict(module.convs.items()), 'fc6': module.fc6, 'fc7': module.fc7,
             'score_fr': module.score_fr, 'score_pool4': module.score_pool4,
             'score_pool3': module.score_pool3}
    for name, layer in convs.items():
        copy(layer.weight, np.asarray(params[name]['kernel']).transpose(3, 2, 0, 1))
        copy(layer.bias, np.asarray(params[name]['bias']))
    for name in ('upscore2', 'upscore_pool4'):
        # flax's ConvTranspose (transpose_kernel=False) correlates the dilated input with
        # the kernel as stored; torch's ConvTranspose2d with the spatially flipped kernel.
        kernel = np.asarray(params[name]['kernel'])[::-1, ::-1].transpose(2, 3, 0, 1)
        copy(getattr(module, name).weight, kernel)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
