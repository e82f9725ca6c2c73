"""Checking a config before any long work starts: one clear line per problem."""

import numbers

import jax
import ml_collections

from fcn_jax import models, weights_io


class ConfigError(ValueError):
    """A config value that cannot work; the message names the knob."""


_CHOICES = {
    'model': models.MODELS,
    'optimizer': ('adam', 'sgd'),
    'schedule': ('cosine', 'constant'),
    'loss': ('ce', 'ce_dice'),
    'augment': ('none', 'flips', 'strong'),
    'input_channels': (1, 3),
}
_POSITIVE_INTS = ('image_size', 'batch_size', 'num_train_steps', 'log_every_steps',
                  'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
                  'shuffle_buffer', 'prefetch')


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for the first bad value; reads the `init_from` header if set."""
    for key, choices in _CHOICES.items():
        if config[key] not in choices:
            raise ConfigError(f'config.{key}={config[key]!r}: choose one of '
                              + ', '.join(str(c) for c in choices))
    for key in _POSITIVE_INTS:
        value = config[key]
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ConfigError(f'config.{key}={value!r}: must be a positive integer')
    if config.image_size % 32:
        raise ConfigError(f'config.image_size={config.image_size}: must be a multiple of 32 '
                          '(FCN downsamples by 32)')
    devices = jax.device_count()
    if config.batch_size % devices:
        raise ConfigError(f'config.batch_size={config.batch_size} is not divisible by the '
                          f'{devices} devices')
    if not config.width_multiplier > 0:
        raise ConfigError(f'config.width_multiplier={config.width_multiplier}: must be > 0')
    lo, hi = _pair(config.hu_window, 'hu_window')
    if not lo < hi:
        raise ConfigError(f'config.hu_window={tuple(config.hu_window)}: needs low < high HU')
    if len(config.class_weights) != 4 or min(config.class_weights) < 0:
        raise ConfigError(f'config.class_weights={tuple(config.class_weights)}: need 4 '
                          'non-negative weights (background, liver, bone, kidney)')
    if not 0 <= config.dropout_rate < 1:
        raise ConfigError(f'config.dropout_rate={config.dropout_rate}: must be in [0, 1)')
    if not config.learning_rate > 0:
        raise ConfigError(f'config.learning_rate={config.learning_rate}: must be > 0')
    if not 0 <= config.warmup_fraction < 1:
        raise ConfigError(f'config.warmup_fraction={config.warmup_fraction}: must be in [0, 1)')
    if config.profile_steps < 0 or config.num_image_summaries < 0:
        raise ConfigError('config.profile_steps and num_image_summaries must be >= 0')
    if config.init_from:
        if config.width_multiplier != 1.0:
            raise ConfigError(f'config.init_from needs width_multiplier=1.0 (VGG16 widths), '
                              f'got {config.width_multiplier}')
        try:
            weights_io.read_state_dict(config.init_from)  # memory-mapped: reads headers only
        except ValueError as e:
            raise ConfigError(f'config.init_from: {e}') from None


def _pair(value, key: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f'config.{key}={value!r}: need two numbers') from None
    return lo, hi
