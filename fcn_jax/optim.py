"""Optimiser and learning-rate schedule from the config."""

import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_fraction` of the steps, then cosine
    decay to 0 or constant."""
    warmup = int(round(config.warmup_fraction * config.num_train_steps))
    if config.schedule == 'cosine':
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
            decay_steps=max(config.num_train_steps, warmup + 1), end_value=0.0)
    if config.schedule == 'constant':
        return optax.join_schedules(
            [optax.linear_schedule(0.0, config.learning_rate, warmup),
             optax.constant_schedule(config.learning_rate)], [warmup])
    raise ValueError(f'schedule {config.schedule!r}: use cosine or constant')


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """`adam` (AdamW when weight_decay > 0) or `sgd` with momentum and L2 weight decay."""
    schedule = learning_rate_schedule(config)
    if config.optimizer == 'adam':
        return optax.adamw(schedule, weight_decay=config.weight_decay)
    if config.optimizer == 'sgd':
        return optax.chain(optax.add_decayed_weights(config.weight_decay),
                           optax.sgd(schedule, momentum=config.momentum))
    raise ValueError(f'optimizer {config.optimizer!r}: use adam or sgd')
