"""Tests for fcn_jax.models (FCN-32s/16s/8s on VGG16) and fcn_jax.weights_io."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from fcn_jax.models import (FCN, MODELS, bilinear_kernel, bilinear_upsample, conv_as_matmul,
                            create_model, load_vgg16_weights, max_pool_2x2, scaled_channels,
                            upsample_padding, vgg16_params_from_state_dict)
from fcn_jax.weights_io import read_npz, read_safetensors, read_state_dict

# rbg keys: XLA on CPU compiles their random bits much faster than threefry's.
KEY = jax.random.key(0, impl='rbg')
WIDTH = 0.0625  # conv widths 4..32, fc6/fc7 256: fast on CPU.
SCORE_LAYERS = ('score_fr', 'score_pool4', 'score_pool3')


def numpy_init(model: FCN, x: jax.Array, seed: int = 0) -> dict:
    """Variables of the shapes model.init gives, filled by numpy (no XLA compile).

    Conv kernels (score layers included, so logits depend on the input) are He-normal,
    upsampling kernels bilinear, BatchNorm scale/var ones, everything else zeros.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(KEY, x, train=False))

    def make(path: tuple, spec: jax.ShapeDtypeStruct) -> jax.Array:
        layer, leaf = path[-2].key, path[-1].key
        if leaf == 'kernel' and layer.startswith('upscore'):
            factor = spec.shape[0] // 2
            return jnp.asarray(bilinear_kernel(factor, spec.shape[-1]))
        if leaf == 'kernel':
            std = np.sqrt(2.0 / np.prod(spec.shape[:-1]))
            return jnp.asarray(rng.normal(size=spec.shape) * std, spec.dtype)
        return jnp.full(spec.shape, 1.0 if leaf in ('scale', 'var') else 0.0, spec.dtype)

    return jax.tree_util.tree_map_with_path(make, shapes)


def jit_apply(model: FCN, train: bool = False, **kwargs) -> Callable:
    """jit-compiled model.apply(variables, x, train=train, **kwargs)."""
    return jax.jit(lambda v, x, rngs=None: model.apply(v, x, train=train, rngs=rngs, **kwargs))


def images(shape: tuple[int, ...], seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope='module')
def fcn_variables() -> dict[str, dict]:
    """Variables (width WIDTH, 1 input channel, random score layers) per variant."""
    x = jnp.zeros((1, 32, 32, 1))
    return {v: numpy_init(create_model(v, width_multiplier=WIDTH), x) for v in MODELS}


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize('variant', MODELS)
@pytest.mark.parametrize('shape', [(1, 32, 32, 1), (2, 64, 96, 3), (1, 96, 64, 1),
                                   (1, 224, 160, 3)])
def test_output_shape_abstract(variant: str, shape: tuple[int, ...]) -> None:
    model = create_model(variant, width_multiplier=WIDTH)
    out, variables = jax.eval_shape(
        lambda x: model.init_with_output(KEY, x, train=False),
        jax.ShapeDtypeStruct(shape, jnp.float32))
    assert out.shape == shape[:3] + (4,) and out.dtype == jnp.float32
    assert variables['params']['conv1_1']['kernel'].shape == (3, 3, shape[3], 4)


@pytest.mark.parametrize('variant', MODELS)
def test_forward_concrete(variant: str, fcn_variables: dict) -> None:
    model = create_model(variant, width_multiplier=WIDTH)
    apply = jit_apply(model)
    for shape in [(2, 64, 96, 1), (1, 32, 32, 1)]:
        out = apply(fcn_variables[variant], images(shape))
        assert out.shape == shape[:3] + (4,) and out.dtype == jnp.float32
        assert np.all(np.isfinite(out)) and float(jnp.std(out)) > 0
    # Three input channels and two classes.
    model3 = create_model(variant, width_multiplier=WIDTH, num_classes=2)
    x3 = images((1, 64, 32, 3))
    out = jit_apply(model3)(numpy_init(model3, x3), x3)
    assert out.shape == (1, 64, 32, 2) and float(jnp.std(out)) > 0


def test_initialisation() -> None:
    """Real init: layers per variant, zero score layers, bilinear upsampling, float32 params."""
    vgg = {f'conv{b}_{i}' for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for i in range(1, n + 1)}
    common = vgg | {'fc6', 'fc7', 'score_fr'}
    x = jnp.zeros((1, 32, 32, 1))
    names = {v: set(jax.eval_shape(lambda: create_model(v, width_multiplier=WIDTH).init(
        KEY, x, train=False))['params']) for v in MODELS}
    assert names['fcn32s'] == common
    assert names['fcn16s'] == common | {'upscore2', 'score_pool4'}
    assert names['fcn8s'] == common | {'upscore2', 'score_pool4', 'upscore_pool4', 'score_pool3'}
    model = create_model('fcn8s', width_multiplier=WIDTH, learn_final_upsample=True)
    params = model.init(KEY, x, train=False)['params']
    assert set(params) == names['fcn8s'] | {'upscore8'}
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    for name in SCORE_LAYERS:  # zero-initialised, as in the paper
        assert not np.any(params[name]['kernel']) and not np.any(params[name]['bias'])
    np.testing.assert_array_equal(params['upscore2']['kernel'], bilinear_kernel(2, 4))
    np.testing.assert_array_equal(params['upscore_pool4']['kernel'], bilinear_kernel(2, 4))
    np.testing.assert_array_equal(params['upscore8']['kernel'], bilinear_kernel(8, 4))
    assert 'bias' not in params['upscore2']
    kernel = np.asarray(params['conv3_1']['kernel'])  # He-normal: std sqrt(2 / fan_in)
    assert abs(kernel.std() / np.sqrt(2 / (9 * kernel.shape[2])) - 1) < 0.2


def test_channel_widths() -> None:
    def param_shapes(width: float) -> dict:
        model = create_model('fcn32s', width_multiplier=width)
        v = jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, 224, 224, 3)), train=False))
        return {k: p['kernel'].shape for k, p in v['params'].items()}
    full = param_shapes(1.0)  # the paper's VGG16 widths
    assert full['conv1_1'] == (3, 3, 3, 64) and full['conv2_1'] == (3, 3, 64, 128)
    assert full['conv5_3'] == (3, 3, 512, 512)
    assert full['fc6'] == (7, 7, 512, 4096) and full['fc7'] == (1, 1, 4096, 4096)
    assert full['score_fr'] == (1, 1, 4096, 4)
    small = param_shapes(WIDTH)
    assert small['conv1_1'][-1] == 4 and small['conv5_3'][-1] == 32 and small['fc6'][-1] == 256
    assert param_shapes(0.001)['conv1_1'][-1] == 1
    assert scaled_channels(64, 0.125) == 8 and scaled_channels(4096, 0.3) == 1229


def test_rejects_sizes_not_multiple_of_32() -> None:
    model = create_model('fcn8s', width_multiplier=WIDTH)
    with pytest.raises(ValueError, match='multiples of 32'):
        jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, 48, 64, 1)), train=False))


def test_create_model() -> None:
    for name in MODELS:
        model = create_model(name, width_multiplier=0.5, num_classes=3)
        assert isinstance(model, FCN) and model.variant == name
        assert model.width_multiplier == 0.5 and model.num_classes == 3
    for bad in ('fcn4s', 'FCN8s', 'vgg16', ''):
        with pytest.raises(ValueError, match=r'unknown model .*: choose one of fcn32s, fcn16s'):
            create_model(bad)
    with pytest.raises(ValueError, match='unknown FCN variant'):
        jax.eval_shape(lambda: FCN(variant='fcn2s').init(KEY, jnp.zeros((1, 32, 32, 1)),
                                                         train=False))


# ---------------------------------------------------------------------------- upsampling


def test_bilinear_kernel_values() -> None:
    k = bilinear_kernel(2, 3)
    assert k.shape == (4, 4, 3, 3) and k.dtype == np.float32  # HWIO
    f = np.array([0.25, 0.75, 0.75, 0.25])
    for c in range(3):
        np.testing.assert_array_equal(k[:, :, c, c], np.outer(f, f))
    off_diagonal = k * (1 - np.eye(3))[None, None]
    assert not off_diagonal.any()
    k3 = bilinear_kernel(3, 1)  # odd factor: size 5, centred
    np.testing.assert_allclose(k3[2, :, 0, 0], [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3], rtol=1e-6)
    assert bilinear_kernel(32, 1).shape == (64, 64, 1, 1)


@pytest.mark.parametrize('factor', [2, 3, 8, 32])
def test_conv_transpose_is_exact_bilinear(factor: int) -> None:
    h, w, c = 6, 5, 2
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
    x = np.stack([2.0 * i - 3.0 * j + 1.0, 0.5 * i + 1.5 * j], -1)[None].astype(np.float32)
    kernel = bilinear_kernel(factor, c)
    layer = nn.ConvTranspose(c, kernel.shape[:2], strides=(factor, factor),
                             padding=upsample_padding(factor), use_bias=False)
    y = np.asarray(layer.apply({'params': {'kernel': jnp.asarray(kernel)}}, x))
    assert y.shape == (1, h * factor, w * factor, c)
    # Output pixel o samples input coordinate (o + 0.5) / factor - 0.5.
    si, sj = np.meshgrid((np.arange(h * factor) + 0.5) / factor - 0.5,
                         (np.arange(w * factor) + 0.5) / factor - 0.5, indexing='ij')
    expected = np.stack([2.0 * si - 3.0 * sj + 1.0, 0.5 * si + 1.5 * sj], -1)
    b = factor // 2  # border where the transposed conv sees zero padding
    interior = (slice(None), slice(b, h * factor - b), slice(b, w * factor - b))
    np.testing.assert_allclose(y[interior], expected[None][interior], atol=1e-5)
    # Matches jax.image.resize (half-pixel centres) in the interior.
    resized = jax.image.resize(x, y.shape, 'linear')
    np.testing.assert_allclose(y[interior], np.asarray(resized)[interior], atol=1e-5)
    # The fixed (parameter-free) upsampling is the same operator, border included.
    np.testing.assert_allclose(bilinear_upsample(jnp.asarray(x), factor), y, atol=1e-5)
    # transpose_kernel=True flips and swaps the kernel; the bilinear kernel is invariant.
    flipped = layer.clone(transpose_kernel=True).apply(
        {'params': {'kernel': jnp.asarray(kernel)}}, x)
    np.testing.assert_allclose(flipped, y, atol=1e-5)


@pytest.mark.parametrize('variant', MODELS)
def test_learned_final_upsample_starts_bilinear(variant: str, fcn_variables: dict) -> None:
    x = images((1, 64, 32, 1))
    fixed = create_model(variant, width_multiplier=WIDTH)
    learned = create_model(variant, width_multiplier=WIDTH, learn_final_upsample=True)
    name = {'fcn32s': 'upscore', 'fcn16s': 'upscore16', 'fcn8s': 'upscore8'}[variant]
    factor = {'fcn32s': 32, 'fcn16s': 16, 'fcn8s': 8}[variant]
    shapes = jax.eval_shape(lambda: learned.init(KEY, x, train=False))['params']
    assert shapes[name]['kernel'].shape == (2 * factor, 2 * factor, 4, 4)
    params = {**fcn_variables[variant]['params'], name: {'kernel': bilinear_kernel(factor, 4)}}
    np.testing.assert_allclose(jit_apply(learned)({'params': params}, x),
                               jit_apply(fixed)(fcn_variables[variant], x), atol=1e-4)


# ---------------------------------------------------------------------------- CPU forms


@pytest.mark.parametrize('kernel,shape,padding', [
    (7, (2, 4, 4, 6), 'SAME'),  # fc6 at 128 x 128 pixels: the kernel covers the map
    (7, (1, 2, 6, 3), 'SAME'),
    (3, (2, 8, 5, 4), 'SAME'),
    (1, (2, 3, 5, 6), 'SAME'),
    (3, (1, 6, 6, 2), ((0, 2), (1, 0))),
    (3, (1, 6, 6, 2), 'VALID'),
])
def test_conv_as_matmul_matches_lax(kernel: int, shape: tuple[int, ...], padding) -> None:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, shape[-1], 5)), jnp.float32)
    dn = ('NHWC', 'HWIO', 'NHWC')

    def conv(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w, (1, 1), padding, dimension_numbers=dn)))

    ref = jax.grad(conv(jax.lax.conv_general_dilated), argnums=(0, 1))
    got = jax.grad(conv(conv_as_matmul), argnums=(0, 1))
    np.testing.assert_allclose(conv_as_matmul(x, w, (1, 1), padding, dimension_numbers=dn),
                               jax.lax.conv_general_dilated(x, w, (1, 1), padding,
                                                            dimension_numbers=dn),
                               rtol=1e-5, atol=1e-4)
    for a, b in zip(got(x, w), ref(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    # Strided convs are left to lax.
    strided = conv_as_matmul(x, w, (2, 2), 'SAME', dimension_numbers=dn)
    np.testing.assert_array_equal(
        strided, jax.lax.conv_general_dilated(x, w, (2, 2), 'SAME', dimension_numbers=dn))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_max_pool_2x2_matches_flax_with_ties(dtype) -> None:
    rng = np.random.default_rng(0)
    g = jnp.asarray(rng.normal(size=(2, 4, 6, 3)), dtype)
    for x in (rng.normal(size=(2, 8, 12, 3)), rng.integers(-2, 3, size=(2, 8, 12, 3))):
        x = jnp.asarray(x, dtype)
        y_ref, vjp_ref = jax.vjp(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), x)
        y, vjp = jax.jit(lambda x: jax.vjp(max_pool_2x2, x))(x)
        np.testing.assert_array_equal(y, y_ref)
        # The whole gradient goes to the first maximum of each window, as with nn.max_pool.
        np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])
        assert vjp(g)[0].dtype == dtype


# ---------------------------------------------------------------------------- options


def test_batch_norm_on_and_off() -> None:
    x = images((2, 32, 64, 1))
    plain = jax.eval_shape(lambda: create_model('fcn8s', width_multiplier=WIDTH).init(
        KEY, x, train=False))
    assert set(plain) == {'params'} and 'bias' in plain['params']['conv1_1']
    model = create_model('fcn8s', width_multiplier=WIDTH, batch_norm=True)
    variables = numpy_init(model, x)
    stats = variables['batch_stats']
    assert len(stats) == 15 and {'conv1_1_bn', 'conv5_3_bn', 'fc6_bn', 'fc7_bn'} <= set(stats)
    assert 'bias' not in variables['params']['conv1_1']  # BatchNorm supplies the shift
    assert set(variables['params']['conv1_1_bn']) == {'scale', 'bias'}
    out, updates = jit_apply(model, train=True, mutable=['batch_stats'])(
        variables, x, rngs={'dropout': KEY})
    assert out.shape == (2, 32, 64, 4) and np.all(np.isfinite(out))
    new_mean = updates['batch_stats']['conv1_1_bn']['mean']
    assert new_mean.shape == (4,) and not np.allclose(new_mean, stats['conv1_1_bn']['mean'])
    out_eval = jit_apply(model)(variables, x)  # running averages, nothing mutable
    assert out_eval.shape == (2, 32, 64, 4) and np.all(np.isfinite(out_eval))
    assert not np.allclose(out_eval, out)


def test_batch_norm_cross_replica_statistics() -> None:
    """With bn_axis_name, replicas normalise with the statistics of the whole batch."""
    x = images((4, 32, 32, 1))
    model = create_model('fcn32s', width_multiplier=WIDTH, batch_norm=True, dropout_rate=0.0)
    variables = numpy_init(model, x)
    out, upd = jit_apply(model, train=True, mutable=['batch_stats'])(variables, x)
    sharded = create_model('fcn32s', width_multiplier=WIDTH, batch_norm=True, dropout_rate=0.0,
                           bn_axis_name='replica')
    run = jax.jit(jax.vmap(
        lambda xs: sharded.apply(variables, xs, train=True, mutable=['batch_stats']),
        axis_name='replica'))
    out_r, upd_r = run(x.reshape(2, 2, 32, 32, 1))
    np.testing.assert_allclose(out_r.reshape(out.shape), out, rtol=1e-4, atol=1e-4)
    for name in ('conv1_1_bn', 'conv4_2_bn', 'fc7_bn'):
        for stat in ('mean', 'var'):
            for r in range(2):
                np.testing.assert_allclose(upd_r['batch_stats'][name][stat][r],
                                           upd['batch_stats'][name][stat], rtol=1e-4, atol=1e-5)


def test_bfloat16_compute() -> None:
    x = images((1, 64, 64, 1))
    model16 = create_model('fcn8s', width_multiplier=WIDTH, dtype=jnp.bfloat16)
    model32 = create_model('fcn8s', width_multiplier=WIDTH)
    shapes = jax.eval_shape(lambda: model16.init(KEY, x, train=False))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
    variables = numpy_init(model16, x)
    out, state = jit_apply(model16, capture_intermediates=True)(variables, x)
    assert out.dtype == jnp.float32 and out.shape == (1, 64, 64, 4)
    assert state['intermediates']['conv3_1']['__call__'][0].dtype == jnp.bfloat16
    out32 = jit_apply(model32)(variables, x)
    np.testing.assert_allclose(out, out32, atol=0.05 * float(jnp.max(jnp.abs(out32))))
    assert float(jnp.std(out)) > 0 and not np.array_equal(out, out32)


def test_dropout_only_in_train_mode(fcn_variables: dict) -> None:
    model = create_model('fcn16s', width_multiplier=WIDTH)
    v, x = fcn_variables['fcn16s'], images((1, 64, 64, 1))
    evaluate, train = jit_apply(model), jit_apply(model, train=True)
    eval1 = evaluate(v, x)  # no dropout rng needed
    np.testing.assert_array_equal(eval1, evaluate(v, x))
    k1, k2 = jax.random.split(KEY)
    train1 = train(v, x, rngs={'dropout': k1})
    np.testing.assert_array_equal(train1, train(v, x, rngs={'dropout': k1}))
    assert not np.allclose(train1, train(v, x, rngs={'dropout': k2}))
    assert not np.allclose(train1, eval1)
    no_dropout = create_model('fcn16s', width_multiplier=WIDTH, dropout_rate=0.0)
    np.testing.assert_allclose(jit_apply(no_dropout, train=True)(v, x, rngs={'dropout': k1}), eval1,
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- weights

_ST_NAMES = {np.dtype(np.float32): 'F32', np.dtype(np.float16): 'F16', np.dtype(np.float64): 'F64',
             np.dtype(ml_dtypes.bfloat16): 'BF16', np.dtype(np.int64): 'I64'}
_FEATURES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict | None = None,
                      chunk: int = 1 << 20) -> None:
    """Minimal safetensors writer (little-endian host); all-zero chunks become file holes."""
    header: dict = {'__metadata__': metadata} if metadata else {}
    offset = 0
    for name, a in tensors.items():
        header[name] = {'dtype': _ST_NAMES[a.dtype], 'shape': list(a.shape),
                        'data_offsets': [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header).encode()
    raw += b' ' * (-len(raw) % 8)
    with open(path, 'wb') as f:
        f.write(len(raw).to_bytes(8, 'little') + raw)
        start = f.tell()
        for name, a in tensors.items():
            data = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
            begin = header[name]['data_offsets'][0]
            for i in range(0, data.size, chunk):
                if data[i:i + chunk].any():
                    f.seek(start + begin + i)
                    f.write(data[i:i + chunk].tobytes())
        f.truncate(start + offset)


def fake_vgg16_state(random_layers: tuple[int, ...] = (0, 12),
                     seed: int = 0) -> dict[str, np.ndarray]:
    """A torchvision-layout VGG16 state dict at full size.

    Layers `features.{i}` in `random_layers` get random values; the rest are np.zeros
    (not backed by memory until written). fc6 gets a few marked entries.
    """
    rng = np.random.default_rng(seed)
    state, cin = {}, 3
    for idx, cout in zip(_FEATURES, _CHANNELS):
        if idx in random_layers:
            state[f'features.{idx}.weight'] = rng.normal(size=(cout, cin, 3, 3)).astype(np.float32)
            state[f'features.{idx}.bias'] = rng.normal(size=cout).astype(np.float32)
        else:
            state[f'features.{idx}.weight'] = np.zeros((cout, cin, 3, 3), np.float32)
            state[f'features.{idx}.bias'] = np.zeros(cout, np.float32)
        cin = cout
    fc6 = np.zeros((4096, 512 * 7 * 7), np.float32)
    for k, (o, c, h, w) in enumerate(FC6_MARKS):
        fc6[o, c * 49 + h * 7 + w] = k + 1.0  # torch flattens pool5 as (C, H, W)
    state['classifier.0.weight'] = fc6
    state['classifier.0.bias'] = np.arange(4096, dtype=np.float32)
    state['classifier.3.weight'] = np.zeros((4096, 4096), np.float32)
    state['classifier.3.weight'][7, 11] = -2.0
    state['classifier.3.bias'] = np.ones(4096, np.float32)
    state['classifier.6.weight'] = np.zeros((1000, 4096), np.float32)
    state['classifier.6.bias'] = np.zeros(1000, np.float32)
    return state


FC6_MARKS = ((0, 0, 0, 0), (4095, 511, 6, 6), (17, 300, 2, 5), (1000, 3, 6, 1))


def full_size_params(input_channels: int, width: float = 1.0, **kwargs) -> dict:
    """Abstract (shape-only) FCN-8s params at `width`: nothing allocated."""
    model = create_model('fcn8s', width_multiplier=width, **kwargs)
    x = jnp.zeros((1, 224, 224, input_channels))
    return jax.eval_shape(lambda: model.init(KEY, x, train=False))['params']


def torch_conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """Reference torch.nn.functional.conv2d (cross-correlation), NCHW / OIHW, in numpy."""
    n, _, h, wd = x.shape
    kh, kw = w.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    out = np.zeros((n, w.shape[0], oh, ow))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum('nchw,oc->nohw', xp[:, :, i:i + oh, j:j + ow], w[:, :, i, j])
    return out + b[None, :, None, None]


@pytest.mark.parametrize('input_channels', [1, 3])
def test_mapping_full_size_shapes(input_channels: int) -> None:
    params = full_size_params(input_channels)
    state = fake_vgg16_state(random_layers=(0,))
    mapped = vgg16_params_from_state_dict(state, params, input_channels=input_channels)
    for name, layer in params.items():
        for leaf, spec in layer.items():
            assert mapped[name][leaf].shape == spec.shape, (name, leaf)
            assert mapped[name][leaf].dtype == np.float32
    for name in ('score_fr', 'score_pool4', 'score_pool3', 'upscore2', 'upscore_pool4'):
        assert mapped[name] is params[name]  # untouched
    w = state['features.0.weight']
    expected = w.sum(axis=1, keepdims=True) if input_channels == 1 else w
    np.testing.assert_allclose(mapped['conv1_1']['kernel'], expected.transpose(2, 3, 1, 0),
                               rtol=1e-6)
    # A variables dict holding 'params' works too.
    wrapped = vgg16_params_from_state_dict(state, {'params': params}, input_channels=input_channels)
    assert wrapped['params']['fc7']['kernel'].shape == (1, 1, 4096, 4096)


def test_mapping_timm_layout_and_batch_norm() -> None:
    """timm names the fc layers pre_logits.fc1/fc2 with 4-D weights; BN models have no biases."""
    state = fake_vgg16_state(random_layers=())
    state['pre_logits.fc1.weight'] = state.pop('classifier.0.weight').reshape(4096, 512, 7, 7)
    state['pre_logits.fc1.bias'] = state.pop('classifier.0.bias')
    state['pre_logits.fc2.weight'] = state.pop('classifier.3.weight').reshape(4096, 4096, 1, 1)
    state['pre_logits.fc2.bias'] = state.pop('classifier.3.bias')
    params = full_size_params(3, batch_norm=True)
    mapped = vgg16_params_from_state_dict(state, params, input_channels=3)
    assert set(mapped['fc6']) == {'kernel'} and set(mapped['fc6_bn']) == {'scale', 'bias'}
    o, c, h, w = FC6_MARKS[2]
    assert mapped['fc6']['kernel'][h, w, c, o] == 3.0
    assert mapped['fc7']['kernel'][0, 0, 11, 7] == -2.0


def test_fc6_reshape_matches_linear_layer() -> None:
    """torchvision's Linear on flattened pool5 equals a 7x7 'VALID' conv with the mapped kernel."""
    state = fake_vgg16_state(random_layers=())
    rng = np.random.default_rng(1)
    o_sel = np.array([0, 9, 2047, 4095])
    state['classifier.0.weight'][o_sel] = rng.normal(size=(len(o_sel), 512 * 49))
    pool5 = rng.normal(size=(512, 7, 7)).astype(np.float32)
    weight, bias = state['classifier.0.weight'][o_sel], state['classifier.0.bias'][o_sel]
    linear = weight.astype(np.float64) @ pool5.reshape(-1) + bias
    mapped = vgg16_params_from_state_dict(state, full_size_params(3), input_channels=3)
    kernel = np.asarray(mapped['fc6']['kernel'][..., o_sel])
    conv = nn.Conv(len(o_sel), (7, 7), padding='VALID')
    out = conv.apply({'params': {'kernel': kernel, 'bias': bias}}, pool5.transpose(1, 2, 0)[None])
    np.testing.assert_allclose(np.asarray(out).reshape(-1), linear, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize('fmt', ['safetensors', 'npz'])
def test_load_vgg16_weights_from_file(fmt: str, tmp_path: Path) -> None:
    state = fake_vgg16_state(random_layers=(0, 12))
    path = tmp_path / f'vgg16.{fmt}'
    if fmt == 'safetensors':
        write_safetensors(path, state, metadata={'format': 'pt'})
    else:
        np.savez(path, **state)
    rng = np.random.default_rng(2)
    grey = rng.normal(size=(2, 1, 10, 12)).astype(np.float32)
    w0, b0 = state['features.0.weight'], state['features.0.bias']
    for channels in (1, 3):
        loaded = load_vgg16_weights(path, full_size_params(channels), input_channels=channels)
        p = loaded['conv1_1']
        assert isinstance(p['kernel'], jax.Array) and p['kernel'].shape == (3, 3, channels, 64)
        # conv1_1 with the loaded weights vs. torch's conv on the RGB-replicated slice.
        x = grey if channels == 1 else rng.normal(size=(2, 3, 10, 12)).astype(np.float32)
        rgb = np.repeat(x, 3, axis=1) if channels == 1 else x
        ours = nn.Conv(64, (3, 3), padding='SAME').apply({'params': p}, x.transpose(0, 2, 3, 1))
        np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2),
                                   torch_conv2d(rgb, w0, b0, pad=1), rtol=1e-4, atol=1e-4)
        # conv3_2 (features.12): OIHW -> HWIO.
        np.testing.assert_array_equal(loaded['conv3_2']['kernel'],
                                      state['features.12.weight'].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(loaded['conv3_2']['bias'], state['features.12.bias'])
        # fc6: (O, C*7*7) -> (7, 7, C, O); the marked entries land where expected.
        fc6 = np.asarray(loaded['fc6']['kernel'])
        assert fc6.shape == (7, 7, 512, 4096)
        for k, (o, c, h, w) in enumerate(FC6_MARKS):
            assert fc6[h, w, c, o] == k + 1.0
        assert fc6.sum() == sum(range(1, len(FC6_MARKS) + 1))
        np.testing.assert_array_equal(loaded['fc6']['bias'], state['classifier.0.bias'])
        assert loaded['fc7']['kernel'].shape == (1, 1, 4096, 4096)
        assert loaded['fc7']['kernel'][0, 0, 11, 7] == -2.0
        del loaded, fc6


def test_safetensors_reader_dtypes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    tensors = {
        'f32': rng.normal(size=(2, 3)).astype(np.float32),
        'f16': rng.normal(size=(4,)).astype(np.float16),
        'bf16': rng.normal(size=(3, 1, 2)).astype(ml_dtypes.bfloat16),
        'f64': rng.normal(size=(1, 5)),
        'scalar': np.array(1.5, np.float32),
        'empty': np.zeros((0, 3), np.float32),
    }
    path = tmp_path / 't.safetensors'
    write_safetensors(path, tensors, metadata={'format': 'pt'})
    read = read_safetensors(path)
    assert set(read) == set(tensors)
    for name, a in tensors.items():
        assert read[name].dtype == a.dtype and read[name].shape == a.shape, name
        np.testing.assert_array_equal(read[name], a)
    assert set(read_state_dict(path)) == set(tensors)
    np.savez(tmp_path / 't.npz', **{k: v for k, v in tensors.items() if k != 'bf16'})
    assert set(read_npz(tmp_path / 't.npz')) == set(tensors) - {'bf16'}


def test_weight_file_errors(tmp_path: Path) -> None:
    params = full_size_params(1)

    def load(path: Path) -> None:
        load_vgg16_weights(path, params, input_channels=1)

    missing = tmp_path / 'missing.safetensors'
    with pytest.raises(ValueError, match=f'{missing}: cannot read'):
        load(missing)
    with pytest.raises(ValueError, match='cannot read npz'):
        load(tmp_path / 'missing.npz')
    garbage = tmp_path / 'garbage.safetensors'
    garbage.write_bytes(b'this is not a safetensors file')
    with pytest.raises(ValueError, match='garbage.safetensors: header length'):
        load(garbage)
    (tmp_path / 'empty.safetensors').write_bytes(b'')
    with pytest.raises(ValueError, match='empty.safetensors'):
        load(tmp_path / 'empty.safetensors')
    bad_npz = tmp_path / 'bad.npz'
    bad_npz.write_bytes(b'PK\x03\x04 broken zip')
    with pytest.raises(ValueError, match='bad.npz: cannot read npz'):
        load(bad_npz)
    truncated = tmp_path / 'truncated.safetensors'
    write_safetensors(truncated, {'a': np.ones((4, 4), np.float32)})
    truncated.write_bytes(truncated.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated.safetensors: tensor 'a' data_offsets"):
        read_safetensors(truncated)
    ints = tmp_path / 'ints.safetensors'
    write_safetensors(ints, {'a': np.ones(3, np.int64)})
    with pytest.raises(ValueError, match="unsupported dtype 'I64'"):
        read_safetensors(ints)
    with pytest.raises(ValueError, match='unknown weight file type'):
        load(tmp_path / 'vgg16.pth')
    small = tmp_path / 'small.safetensors'
    write_safetensors(small, {'features.0.weight': np.ones((64, 3, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r'small.safetensors: missing key features.0.bias'):
        load(small)


def test_mapping_errors() -> None:
    state = fake_vgg16_state(random_layers=())
    params = full_size_params(1)
    no_key = {k: v for k, v in state.items() if k != 'features.28.weight'}
    with pytest.raises(ValueError, match='missing key features.28.weight for conv5_3'):
        vgg16_params_from_state_dict(no_key, params, input_channels=1)
    bad_shape = dict(state, **{'features.10.weight': np.zeros((256, 128, 5, 5), np.float32)})
    with pytest.raises(ValueError, match=r'features.10.weight has shape \(256, 128, 5, 5\)'):
        vgg16_params_from_state_dict(bad_shape, params, input_channels=1)
    bad_bias = dict(state, **{'classifier.3.bias': np.zeros(10, np.float32)})
    with pytest.raises(ValueError, match='classifier.3.bias has shape'):
        vgg16_params_from_state_dict(bad_bias, params, input_channels=1)
    with pytest.raises(ValueError, match='width_multiplier=1.0'):
        vgg16_params_from_state_dict(state, full_size_params(1, width=0.5), input_channels=1)
    with pytest.raises(ValueError, match='input_channels=3 but conv1_1 takes 1'):
        vgg16_params_from_state_dict(state, params, input_channels=3)
