"""Training and evaluation: `train_and_evaluate(config, workdir)` and its pure step functions.

Steps are written per device with `axis_name='batch'` collectives (gradient `pmean`,
cross-replica BatchNorm statistics) and mapped over all local devices with
`jax.pmap`; the train state goes in and out unreplicated (`in_axes=None`,
`out_axes=None`), so it stays one replicated array per leaf.
"""

import functools
import json
import os
import time
from typing import Any

from absl import logging
from clu import metric_writers, periodic_actions
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from fcn_jax import (augment, checkpointing, config_checks, input_pipeline, losses, metrics,
                     models, optim, overlays)
from fcn_jax.datasets.ircad import labels

AXIS = 'batch'


class TrainState(train_state.TrainState):
    batch_stats: Any = None  # BatchNorm running statistics when `config.batch_norm`


def create_model(config: ml_collections.ConfigDict) -> models.FCN:
    return models.create_model(
        config.model, num_classes=labels.NUM_CLASSES, width_multiplier=config.width_multiplier,
        batch_norm=config.batch_norm, bn_axis_name=AXIS if config.batch_norm else None,
        dtype=jnp.bfloat16 if config.half_precision else jnp.float32,
        dropout_rate=config.dropout_rate, learn_final_upsample=config.learn_final_upsample)


def create_train_state(rng: jax.Array, config: ml_collections.ConfigDict,
                       model: models.FCN) -> TrainState:
    """Initial state: random init, or VGG16 weights from `config.init_from`."""
    shape = (1, config.image_size, config.image_size, config.input_channels)
    init = jax.jit(functools.partial(model.init, train=False))
    variables = init({'params': rng}, jnp.zeros(shape, jnp.float32))
    params = variables['params']
    if config.init_from:
        params = models.load_vgg16_weights(config.init_from, params,
                                           input_channels=config.input_channels)
    return TrainState.create(apply_fn=model.apply, params=params,
                             tx=optim.create_optimizer(config),
                             batch_stats=variables.get('batch_stats'))


def _variables(state: TrainState) -> dict:
    if state.batch_stats is None:
        return {'params': state.params}
    return {'params': state.params, 'batch_stats': state.batch_stats}


def _class_weights(config: ml_collections.ConfigDict) -> jax.Array | None:
    weights = tuple(float(w) for w in config.class_weights)
    return None if all(w == 1.0 for w in weights) else jnp.asarray(weights, jnp.float32)


def _loss(config: ml_collections.ConfigDict, logits, batch) -> jax.Array:
    return losses.segmentation_loss(logits, batch['mask'], batch['labelled'], loss=config.loss,
                                    class_weights=_class_weights(config),
                                    dice_weight=config.dice_weight)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *,
               config: ml_collections.ConfigDict) -> tuple[TrainState, metrics.TrainMetrics]:
    """One optimisation step on one device's share of the batch (inside pmap)."""
    rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
    augment_rng, dropout_rng = jax.random.split(rng)
    image, mask = augment.augment_batch(augment_rng, batch['image'], batch['mask'], config.augment)
    batch = dict(batch, image=image, mask=mask)

    def loss_fn(params):
        mutable = ['batch_stats'] if config.batch_norm else False
        out = state.apply_fn(dict(_variables(state), params=params), batch['image'], train=True,
                             rngs={'dropout': dropout_rng}, mutable=mutable)
        logits, updates = out if mutable else (out, {})
        per_example = _loss(config, logits, batch)
        return per_example.mean(), (per_example, updates)

    (_, (per_example, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if jax.lax.axis_size(AXIS) > 1:  # on one device the gradient is already the mean
        grads = jax.lax.pmean(grads, AXIS)
    new_state = state.apply_gradients(grads=grads)
    if updates:  # cross-replica BatchNorm: the statistics are already equal on every device
        new_state = new_state.replace(batch_stats=updates['batch_stats'])
    return new_state, metrics.TrainMetrics.gather_from_model_output(loss=per_example, axis_name=AXIS)


def eval_step(state: TrainState, batch: dict, *,
              config: ml_collections.ConfigDict) -> metrics.EvalMetrics:
    """Loss and confusion matrices of one device's share of an eval batch (padding masked)."""
    logits = state.apply_fn(_variables(state), batch['image'], train=False)
    return metrics.EvalMetrics.gather_from_model_output(
        axis_name=AXIS, loss=_loss(config, logits, batch), logits=logits, labels=batch['mask'],
        labelled=batch['labelled'], mask=batch['valid'])


def predict_step(state: TrainState, image: jax.Array) -> jax.Array:
    """Class ids (int32 [B, H, W]) for one device's images."""
    logits = state.apply_fn(_variables(state), image, train=False)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def pmapped_steps(config: ml_collections.ConfigDict):
    """(train, eval, predict) steps mapped over the local devices; state unreplicated."""
    p_train = jax.pmap(functools.partial(train_step, config=config), axis_name=AXIS,
                       in_axes=(None, 0, None), out_axes=(None, None))
    p_eval = jax.pmap(functools.partial(eval_step, config=config), axis_name=AXIS,
                      in_axes=(None, 0), out_axes=None)
    p_predict = jax.pmap(predict_step, axis_name=AXIS, in_axes=(None, 0))
    return p_train, p_eval, p_predict


def evaluate(state: TrainState, config: ml_collections.ConfigDict, p_eval, p_predict,
             *, num_images: int = 0) -> tuple[dict[str, float], np.ndarray | None]:
    """Metrics over every slice of `config.eval_split`, and overlays of `num_images` slices
    spread evenly through it ([ground truth | prediction], at least 256 pixels high)."""
    total = input_pipeline.num_eval_examples(config) if num_images else 0
    wanted = set(np.linspace(0, total - 1, min(num_images, total)).round().astype(int).tolist())
    collected, images, seen = None, [], 0
    for batch in input_pipeline.eval_iterator(config):
        m = p_eval(state, batch)
        collected = m if collected is None else collected.merge(m)
        valid = list(zip(*np.nonzero(batch['valid'])))
        picked = [(d, b) for i, (d, b) in enumerate(valid, start=seen) if i in wanted]
        seen += len(valid)
        if picked:
            predictions = np.asarray(p_predict(state, batch['image']))
            scale = max(1, -(-256 // config.image_size))
            for d, b in picked:
                images.append(overlays.side_by_side(
                    batch['image'][d, b, ..., 0], batch['mask'][d, b], predictions[d, b],
                    scale=scale))
    summary = metrics.summarize(collected.compute())
    return summary, (np.stack(images) if images else None)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes `<workdir>/config.json` atomically (process 0 only)."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, 'config.json')
    tmp = f'{path}.tmp-{os.getpid()}'
    with tf.io.gfile.GFile(tmp, 'w') as f:
        f.write(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains, evaluates, writes summaries and checkpoints; resumes from the latest checkpoint."""
    config_checks.validate(config)
    input_pipeline.load_builder(config)  # checks the splits; builds the phantom if needed
    tf.io.gfile.makedirs(workdir)
    save_config(config, workdir)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    writer.write_hparams({k: v if isinstance(v, (int, float, str, bool)) else str(v)
                          for k, v in config.items()})

    model = create_model(config)
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    state = create_train_state(init_rng, config, model)
    checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
    state = checkpoints.restore_latest(state)
    start_step = int(state.step)
    logging.info('%s from step %d of %d', 'Resuming' if start_step else 'Starting',
                 start_step, config.num_train_steps)
    learning_rate = optim.learning_rate_schedule(config)
    p_train, p_eval, p_predict = pmapped_steps(config)

    train_iter = input_pipeline.train_iterator(config, start_step=start_step)
    train_iter = flax.jax_utils.prefetch_to_device(train_iter, config.prefetch)
    report = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps)
    hooks = [report]
    if jax.process_index() == 0 and config.profile_steps:
        hooks.append(periodic_actions.Profile(num_profile_steps=config.profile_steps,
                                              logdir=workdir))
    train_metrics = None
    last_time, last_step = time.time(), start_step
    for step in range(start_step + 1, config.num_train_steps + 1):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
            batch = next(train_iter)
            state, step_metrics = p_train(state, batch, jax.random.fold_in(step_rng, step))
        train_metrics = step_metrics if train_metrics is None else train_metrics.merge(step_metrics)
        for hook in hooks:
            hook(step)
        last = step == config.num_train_steps
        if step % config.log_every_steps == 0 or last:
            now = time.time()
            writer.write_scalars(step, {
                'train/loss': float(train_metrics.compute()['loss']),
                'train/learning_rate': float(learning_rate(step - 1)),
                'train/steps_per_sec': (step - last_step) / max(now - last_time, 1e-9),
            })
            train_metrics, last_time, last_step = None, now, step
        if step % config.eval_every_steps == 0 or last:
            eval_start = time.time()
            with report.timed('eval'):
                summary, images = evaluate(state, config, p_eval, p_predict,
                                           num_images=config.num_image_summaries)
            last_time += time.time() - eval_start  # steps/sec counts training time only
            writer.write_scalars(step, {f'eval/{k}': v for k, v in summary.items()})
            if images is not None:
                writer.write_images(step, {'eval/overlays': images})
            logging.info('step %d: %s', step, ', '.join(f'{k} {v:.4f}' for k, v in summary.items()))
            checkpoints.save_if_best(step, state, summary['mean_dice'])
        if step % config.checkpoint_every_steps == 0 or last:
            checkpoints.save(step, state)
    checkpoints.close()
    writer.flush()
    return state
