"""FCN-32s, FCN-16s and FCN-8s on a VGG16 encoder (Long, Shelhamer & Darrell, 2015).

Layout is NHWC throughout; the model maps images [N, H, W, C_in] to float32 logits
[N, H, W, num_classes] for any H and W that are multiples of 32.

Padding. The paper pads conv1_1 by 100 pixels, runs fc6 as an unpadded 7x7 conv and
crops every upsampled map back into register ("crop" layers with fixed offsets).
Here every conv uses 'SAME' padding (fc6 too), so pool_k has exactly H/2^k x W/2^k
cells, and every upsampling is a transposed conv of kernel 2f - f % 2 and stride f
whose padding makes it output exactly f times its input (Caffe's pad = (k - f) // 2).
The maps line up without offsets: output pixel o samples input coordinate
(o + 0.5) / f - 0.5, the half-pixel-centre convention that matches 2x2 pooling.
Near the border (f // 2 pixels) only one input cell contributes, scaled by its
bilinear weight, because the transposed conv sees zeros outside the map.

Initialisation follows the paper and its reference code: the score layers (score_fr,
score_pool4, score_pool3) start at zero ("We zero-initialize the class scoring
layer", Sec. 4.3), upsampling kernels start as bilinear interpolation, the 2x
upsamplings are learned and the final one is fixed unless `learn_final_upsample`.
VGG16 convs use He-normal init when not loaded from pretrained weights.

Precision. Convs run in `dtype` (e.g. bfloat16) with float32 parameters. The
num_classes-channel score head (skip fusion and upsampling) runs in float32: it costs
next to nothing and keeps the returned logits float32.

Speed on CPU. Some ops are written in forms that XLA's CPU backend runs much faster,
with the same results: on the CPU backend fc6 and the 1x1 convs are matmuls
(`conv_as_matmul`), and 2x2 max-pooling has an elementwise gradient (`max_pool_2x2`).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.weights_io import read_state_dict

MODELS = ('fcn32s', 'fcn16s', 'fcn8s')
_FINAL_FACTOR = {'fcn32s': 32, 'fcn16s': 16, 'fcn8s': 8}
_FINAL_NAME = {'fcn32s': 'upscore', 'fcn16s': 'upscore16', 'fcn8s': 'upscore8'}

# VGG16 blocks: (conv names, channels at width 1.0); a 2x2 max-pool ends each block.
VGG16_BLOCKS = (
    (('conv1_1', 'conv1_2'), 64),
    (('conv2_1', 'conv2_2'), 128),
    (('conv3_1', 'conv3_2', 'conv3_3'), 256),
    (('conv4_1', 'conv4_2', 'conv4_3'), 512),
    (('conv5_1', 'conv5_2', 'conv5_3'), 512),
)
FC_CHANNELS = 4096  # fc6 (7x7 conv) and fc7 (1x1 conv) at width 1.0.

_he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def scaled_channels(channels: int, width_multiplier: float) -> int:
    """Channel count of a layer at `width_multiplier`: max(1, round(channels * w))."""
    return max(1, int(round(channels * width_multiplier)))


def bilinear_kernel(factor: int, channels: int) -> np.ndarray:
    """The FCN bilinear upsampling filter, HWIO [k, k, channels, channels], k = 2f - f % 2.

    Each channel is upsampled on its own (the kernel is diagonal in I/O); the spatial
    filter is symmetric, so flipping it (transpose_kernel) would not change it.
    """
    size = 2 * factor - factor % 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    filt = 1.0 - np.abs(np.arange(size) - center) / factor
    kernel = np.zeros((size, size, channels, channels), np.float32)
    idx = np.arange(channels)
    kernel[:, :, idx, idx] = np.outer(filt, filt)[:, :, None]
    return kernel


def upsample_padding(factor: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding for flax `nn.ConvTranspose` (k = 2f - f % 2, stride f) giving f x the input size.

    flax/lax transposed convs pad the stride-dilated input; Caffe's deconv padding
    p = (k - f) // 2 corresponds to k - 1 - p on each side here.
    """
    size = 2 * factor - factor % 2
    pad = size - 1 - (size - factor) // 2
    return (pad, pad), (pad, pad)


def bilinear_init(factor: int) -> Any:
    """A flax kernel initialiser returning `bilinear_kernel(factor, channels)`."""
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        del key
        expected = bilinear_kernel(factor, shape[-1]).shape
        if tuple(shape) != expected:
            raise ValueError(f'bilinear init for factor {factor} needs kernel shape {expected}, '
                             f'got {tuple(shape)}')
        return jnp.asarray(bilinear_kernel(factor, shape[-1]), dtype)
    return init


def _interpolation_matrix(size: int, factor: int) -> np.ndarray:
    """[size * factor, size] matrix of the 1-D bilinear transposed conv (zeros outside)."""
    src = (np.arange(size * factor) + 0.5) / factor - 0.5
    return np.maximum(0.0, 1.0 - np.abs(src[:, None] - np.arange(size)[None, :])).astype(np.float32)


def bilinear_upsample(x: jax.Array, factor: int) -> jax.Array:
    """Fixed bilinear upsampling of NHWC `x` by `factor`, no parameters.

    Gives the same result as `nn.ConvTranspose` with `bilinear_kernel(factor, C)`,
    stride `factor` and `upsample_padding(factor)`, but as two small matmuls with
    the separable 1-D interpolation matrices: per channel, and much cheaper than a
    dense transposed conv on CPU.
    """
    _, h, w, _ = x.shape
    a_h = jnp.asarray(_interpolation_matrix(h, factor), x.dtype)
    a_w = jnp.asarray(_interpolation_matrix(w, factor), x.dtype)
    return jnp.einsum('nhwc,oh,pw->nopc', x, a_h, a_w, precision=jax.lax.Precision.HIGHEST)


def conv_as_matmul(lhs: jax.Array, rhs: jax.Array, window_strides: Any, padding: Any,
                   lhs_dilation: Any = None, rhs_dilation: Any = None,
                   dimension_numbers: Any = None, feature_group_count: int = 1,
                   precision: Any = None, **kwargs: Any) -> jax.Array:
    """`lax.conv_general_dilated` computing an NHWC x HWIO stride-1 conv as one matmul.

    The input's k x k patches are gathered by slicing (im2col) and multiplied by the
    kernel reshaped to [k * k * C_in, C_out]; a 1x1 conv is a plain matmul. Same result
    as the conv up to float rounding. XLA's CPU convolution is slow on small maps, and
    dramatically so when the kernel covers the whole map (fc6, a 7x7 kernel over
    H/32 x W/32 cells: about 30x slower than the matmul at 128 x 128 pixels). Any other
    conv (strides, dilation, groups, other layouts) goes to `lax.conv_general_dilated`.
    """
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
    plain = (lhs.ndim == 4 and feature_group_count == 1 and not kwargs
             and all(s == 1 for s in window_strides)
             and all(d == 1 for d in (lhs_dilation or (1, 1)) + (rhs_dilation or (1, 1)))
             and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc)
    if not plain:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision, **kwargs)
    kh, kw, c_in, c_out = rhs.shape
    _, h, w, _ = lhs.shape
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads((h, w), (kh, kw), (1, 1), padding)
    (top, bottom), (left, right) = padding
    out_h, out_w = h + top + bottom - kh + 1, w + left + right - kw + 1
    x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    patches = [x[:, i:i + out_h, j:j + out_w, :] for i in range(kh) for j in range(kw)]
    return jnp.dot(jnp.concatenate(patches, axis=-1), rhs.reshape(kh * kw * c_in, c_out),
                   precision=precision)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 of NHWC `x` (H and W even): `nn.max_pool(x, (2, 2), (2, 2))`.

    The gradient is the same as that of `nn.max_pool` (all of it to the first maximum of
    each window, in row-major order), computed with elementwise selects: XLA's CPU
    backend lowers the generic max-pool gradient (select-and-scatter) to a slow
    index-tracking reduce-window and scatter.
    """
    return jnp.max(_pool_windows(x), axis=(2, 4))


def _pool_windows(x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c)


def _max_pool_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = max_pool_2x2(x)
    return y, (x, y)


def _max_pool_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    x, y = res
    windows = _pool_windows(x)
    taken = jnp.zeros(y.shape, bool)
    rows = []
    for i in range(2):
        cols = []
        for j in range(2):
            hit = jnp.logical_and(windows[:, :, i, :, j, :] == y, jnp.logical_not(taken))
            taken = jnp.logical_or(taken, hit)
            cols.append(jnp.where(hit, g, 0))
        rows.append(jnp.stack(cols, axis=3))
    return (jnp.stack(rows, axis=2).reshape(x.shape),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def _conv_function(kernel_size: int) -> Any:
    """The `conv_general_dilated` for an nn.Conv with a square kernel of `kernel_size`.

    On the CPU backend fc6 (7x7) and the 1x1 convs (fc7, score layers) run as matmuls
    (`conv_as_matmul`); the 3x3 convs, and every conv elsewhere, as `lax` convolutions.
    """
    if kernel_size != 3 and jax.default_backend() == 'cpu':
        return conv_as_matmul
    return None  # flax's default, lax.conv_general_dilated


class FCN(nn.Module):
    """Fully convolutional network on VGG16: FCN-32s, FCN-16s or FCN-8s.

    Attributes:
      variant: 'fcn32s', 'fcn16s' or 'fcn8s'.
      num_classes: number of output classes.
      width_multiplier: scales every channel count (1.0 = paper: 64..512, 4096 for fc6/fc7).
      batch_norm: BatchNorm after each VGG conv and fc6/fc7 (the paper has none); convs
        then have no bias.
      bn_axis_name: axis name for cross-replica BatchNorm statistics (pmap/shard_map).
      dtype: compute dtype (jnp.float32 or jnp.bfloat16); parameters are float32.
      dropout_rate: dropout after fc6 and fc7, active only when `train` is True.
      learn_final_upsample: learn the final (x32/x16/x8) upsampling instead of fixing it
        (a dense nn.ConvTranspose; on CPU XLA runs it far slower than the fixed matmuls).
    """
    variant: str = 'fcn8s'
    num_classes: int = 4
    width_multiplier: float = 1.0
    batch_norm: bool = False
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    dropout_rate: float = 0.5
    learn_final_upsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps images [N, H, W, C_in] (H, W multiples of 32) to logits [N, H, W, num_classes]."""
        if self.variant not in MODELS:
            raise ValueError(f'unknown FCN variant {self.variant!r}: '
                             f'choose one of {", ".join(MODELS)}')
        if x.ndim != 4 or x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(f'FCN input must be [N, H, W, C] with H and W multiples of 32, '
                             f'got shape {x.shape}')
        conv = functools.partial(nn.Conv, padding='SAME', use_bias=not self.batch_norm,
                                 dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_he_normal)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                                 axis_name=self.bn_axis_name)
        dropout = functools.partial(nn.Dropout, rate=self.dropout_rate, deterministic=not train)

        def conv_relu(y: jax.Array, channels: int, size: int, name: str) -> jax.Array:
            y = conv(scaled_channels(channels, self.width_multiplier), (size, size), name=name,
                     conv_general_dilated=_conv_function(size))(y)
            if self.batch_norm:
                y = norm(name=f'{name}_bn')(y)
            return nn.relu(y)

        def score(y: jax.Array, name: str) -> jax.Array:
            y = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=nn.initializers.zeros, name=name,
                        conv_general_dilated=_conv_function(1))(y)
            return y.astype(jnp.float32)

        def upsample(y: jax.Array, factor: int, name: str) -> jax.Array:
            return nn.ConvTranspose(self.num_classes, (2 * factor - factor % 2,) * 2,
                                    strides=(factor, factor), padding=upsample_padding(factor),
                                    use_bias=False, kernel_init=bilinear_init(factor),
                                    dtype=jnp.float32, param_dtype=jnp.float32, name=name)(y)

        pools = []
        for names, channels in VGG16_BLOCKS:
            for name in names:
                x = conv_relu(x, channels, 3, name)
            x = max_pool_2x2(x)
            pools.append(x)
        x = dropout()(conv_relu(x, FC_CHANNELS, 7, 'fc6'))
        x = dropout()(conv_relu(x, FC_CHANNELS, 1, 'fc7'))

        y = score(x, 'score_fr')
        if self.variant in ('fcn16s', 'fcn8s'):
            y = upsample(y, 2, 'upscore2') + score(pools[3], 'score_pool4')
        if self.variant == 'fcn8s':
            y = upsample(y, 2, 'upscore_pool4') + score(pools[2], 'score_pool3')
        factor = _FINAL_FACTOR[self.variant]
        if self.learn_final_upsample:
            return upsample(y, factor, _FINAL_NAME[self.variant])
        return bilinear_upsample(y, factor)


FCN32s = functools.partial(FCN, variant='fcn32s')
FCN16s = functools.partial(FCN, variant='fcn16s')
FCN8s = functools.partial(FCN, variant='fcn8s')


def create_model(name: str, **kwargs: Any) -> FCN:
    """Builds 'fcn32s', 'fcn16s' or 'fcn8s'; `kwargs` set the other FCN attributes."""
    if name not in MODELS:
        raise ValueError(f'unknown model {name!r}: choose one of {", ".join(MODELS)}')
    return FCN(variant=name, **kwargs)


# ----------------------------------------------------------------------------------
# Pretrained VGG16 (torchvision layout) -> FCN parameters.

_TORCH_FEATURE_INDEX = dict(zip(
    (name for names, _ in VGG16_BLOCKS for name in names),
    (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)))
# torchvision names first; timm's VGG module names its fc layers pre_logits.fc1/fc2.
_FC_PREFIXES = {'fc6': ('classifier.0', 'pre_logits.fc1'),
                'fc7': ('classifier.3', 'pre_logits.fc2')}


def _torch_to_hwio(w: np.ndarray, target_shape: tuple[int, ...], key: str, source: str,
                   sum_input: bool = False) -> np.ndarray:
    """Converts a torch conv weight OIHW (or a Linear weight [O, C*H*W]) to HWIO.

    A Linear weight acting on a flattened C x H x W map is the OIHW conv weight
    reshaped; `sum_input` sums over the input channels (RGB weights for grey input).
    """
    kh, kw, ci, co = target_shape
    src_ci = 3 if sum_input else ci
    if w.shape == (co, src_ci * kh * kw):
        w = w.reshape(co, src_ci, kh, kw)
    if w.shape != (co, src_ci, kh, kw):
        raise ValueError(f'{source}: {key} has shape {tuple(w.shape)}, expected '
                         f'{(co, src_ci, kh, kw)} (or {(co, src_ci * kh * kw)})')
    if sum_input:
        w = w.astype(np.float32).sum(axis=1, keepdims=True)
    return np.transpose(w, (2, 3, 1, 0))


def vgg16_params_from_state_dict(state: Mapping[str, np.ndarray], params: Mapping[str, Any], *,
                                 input_channels: int, source: str = 'state dict') -> dict:
    """Returns `params` with VGG16 conv1_1..conv5_3, fc6 and fc7 taken from `state`.

    `state` is a torchvision-layout VGG16 state dict (`features.{0..28}.weight/bias`,
    `classifier.0/3.weight/bias`; `classifier.6` is ignored). `params` is the FCN
    'params' collection (or a variables dict holding it) at width_multiplier 1.0; its
    leaves may be arrays or jax.ShapeDtypeStruct (only .shape and .dtype are read).
    Loaded leaves are numpy arrays (possibly views of `state`); the rest are kept.
    Biases are skipped for layers without one (batch_norm models).
    """
    if 'params' in params and 'conv1_1' not in params:
        return {**params, 'params': vgg16_params_from_state_dict(
            state, params['params'], input_channels=input_channels, source=source)}
    try:
        conv1, fc6 = params['conv1_1']['kernel'].shape, params['fc6']['kernel'].shape
    except (KeyError, TypeError):
        raise ValueError(f'{source}: params are not FCN parameters '
                         f'(no conv1_1/fc6 kernels)') from None
    if conv1[-1] != 64 or fc6[-1] != FC_CHANNELS:
        raise ValueError(f'{source}: pretrained VGG16 weights need width_multiplier=1.0, but the '
                         f'model has {conv1[-1]} conv1_1 channels (expected 64) and {fc6[-1]} '
                         f'fc6 channels (expected {FC_CHANNELS})')
    if input_channels not in (1, 3) or conv1[2] != input_channels:
        raise ValueError(f'{source}: input_channels={input_channels} but conv1_1 takes '
                         f'{conv1[2]} channels; use 1 or 3 and build params to match')

    prefixes = {name: (f'features.{i}',) for name, i in _TORCH_FEATURE_INDEX.items()}
    prefixes.update(_FC_PREFIXES)
    out = dict(params)
    for layer, candidates in prefixes.items():
        prefix = next((p for p in candidates if f'{p}.weight' in state), None)
        if prefix is None:
            raise ValueError(f'{source}: missing key {candidates[0]}.weight for {layer} '
                             f'(not a torchvision VGG16 state dict?)')
        target = params[layer]
        kernel = _torch_to_hwio(np.asarray(state[f'{prefix}.weight']), target['kernel'].shape,
                                f'{prefix}.weight', source,
                                sum_input=layer == 'conv1_1' and input_channels == 1)
        new = dict(target, kernel=np.asarray(kernel, dtype=target['kernel'].dtype))
        if 'bias' in target:
            key = f'{prefix}.bias'
            if key not in state:
                raise ValueError(f'{source}: missing key {key} for {layer}')
            bias = np.asarray(state[key])
            if bias.shape != target['bias'].shape:
                raise ValueError(f'{source}: {key} has shape {tuple(bias.shape)}, '
                                 f'expected {tuple(target["bias"].shape)}')
            new['bias'] = np.asarray(bias, dtype=target['bias'].dtype)
        out[layer] = new
    return out


def load_vgg16_weights(path: str | os.PathLike, params: Mapping[str, Any], *,
                       input_channels: int) -> dict:
    """Loads torchvision-layout VGG16 weights (`.safetensors` or `.npz`) into FCN params.

    Only for width_multiplier 1.0. For input_channels 1, conv1_1 weights are summed
    over RGB (a grey slice replicated to RGB gives the same response). Raises
    ValueError naming the file for a missing/unreadable file or wrong keys/shapes.
    """
    source = os.fspath(path)
    mapped = vgg16_params_from_state_dict(read_state_dict(source), params,
                                          input_channels=input_channels, source=source)
    # Copy onto the default device, detaching the arrays from the file's memory map.
    return jax.tree.map(lambda a: jnp.array(a) if isinstance(a, np.ndarray) else a, mapped)
