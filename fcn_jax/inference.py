"""Running a trained model on whole CT volumes: restore a checkpoint, predict every slice.

The model config (architecture, input size, HU window) is the one saved in the workdir
by training; the command line may change only inference knobs (`INFERENCE_KNOBS`).
"""

import functools
import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from fcn_jax import checkpointing, input_pipeline, train
from fcn_jax.datasets.ircad import labels

# Knobs that do not change the trained model: taken from the command-line config.
INFERENCE_KNOBS = ('dataset', 'data_dir', 'eval_split', 'batch_size', 'tta', 'lcc',
                   'surface_metrics', 'seed')


def trained_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The config saved in `workdir` with the inference knobs of `config` applied."""
    path = os.path.join(workdir, 'config.json')
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f'{workdir}: no trained model here (no config.json); train one '
                                'with --mode=train first')
    with tf.io.gfile.GFile(path) as f:
        saved = ml_collections.ConfigDict(json.load(f))
    merged = ml_collections.ConfigDict(config.to_dict())  # knobs added since training keep defaults
    for key, value in saved.items():
        if key in INFERENCE_KNOBS:
            continue
        if key in merged and merged[key] != value and not isinstance(value, (list, tuple)):
            logging.info('config.%s=%r from the workdir (trained with it), not %r',
                         key, value, merged[key])
        with merged.ignore_type():
            merged[key] = tuple(value) if isinstance(value, list) else value
    return merged


class Predictor:
    """A restored model that segments whole CT volumes on all local devices."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
                 checkpoint: str = 'best'):
        self.config = config
        model = train.create_model(config)
        state = train.create_train_state(jax.random.PRNGKey(0), config, model)
        checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints,
                                                create=False)
        self.state = checkpoints.restore(state, checkpoint)
        self.step = int(self.state.step)
        self._variables = train._variables(self.state)  # pylint: disable=protected-access
        self._apply = model.apply
        self._cache = {}

    def _predict_fn(self, size: tuple[int, int]):
        """pmapped: images [B, S, S, C] -> class ids uint8 [B, H, W] at the source size."""
        if size not in self._cache:
            self._cache[size] = jax.pmap(functools.partial(
                _predict_classes, apply=self._apply, size=size, tta=bool(self.config.tta)),
                axis_name=train.AXIS, in_axes=(None, 0))
        return self._cache[size]

    def predict(self, hu: np.ndarray, *, progress=None) -> np.ndarray:
        """Class ids uint8 [Z, H, W] for a HU volume int16 [Z, H, W], slice by slice."""
        devices = jax.local_device_count()
        batch = max(self.config.batch_size // jax.process_count(), devices)
        batch -= batch % devices
        fn = self._predict_fn(tuple(hu.shape[1:]))
        out = np.zeros(hu.shape, np.uint8)
        for start in range(0, len(hu), batch):
            chunk = hu[start:start + batch]
            images = np.stack([input_pipeline.preprocess_image(h[..., None], self.config).numpy()
                               for h in chunk])
            padded = np.zeros((batch,) + images.shape[1:], np.float32)
            padded[:len(images)] = images
            classes = fn(self._variables, padded.reshape((devices, -1) + images.shape[1:]))
            out[start:start + len(chunk)] = np.asarray(classes).reshape((batch,) + hu.shape[1:])[:len(chunk)]
            if progress is not None:
                progress.update(len(chunk))
        return out


def _predict_classes(variables, images, *, apply, size, tta: bool):
    """Softmax (averaged over left-right and up-down flips when `tta`), resized bilinearly to
    `size`, then argmax."""
    def probs(x):
        return jax.nn.softmax(apply(variables, x, train=False), axis=-1)

    p = probs(images)
    if tta:
        p = (p + probs(images[:, :, ::-1])[:, :, ::-1] + probs(images[:, ::-1])[:, ::-1]) / 3
    if p.shape[1:3] != size:
        p = jax.image.resize(p, (p.shape[0], *size, labels.NUM_CLASSES), 'linear')
    return jnp.argmax(p, axis=-1).astype(jnp.uint8)
