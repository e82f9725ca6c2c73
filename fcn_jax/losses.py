"""Segmentation losses for partially labelled slices.

Every example carries `labelled` (bool [B, K]): which classes are annotated for the
patient the slice comes from. Pixels of a class that is not annotated are labelled
background, so the losses here compare the labels with the *marginal* prediction: the
probability mass of every unlabelled class is merged into background (class 0). Moving
probability between background and an unlabelled class then changes nothing, and the
model is never taught that, say, kidney is background on a patient whose kidneys were
not drawn.

Class 0 is always the class that receives the merged mass, whatever `labelled[:, 0]`
says. With every class labelled, everything below reduces to the ordinary softmax
losses. All arithmetic is float32, whatever the dtype of the logits.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

# Log-probability given to classes that are merged into background: finite, so that
# gradients stay free of NaN, and small enough that exp() of it is exactly 0.
NEG_LOG_PROB = -1e9

LOSSES: Sequence[str] = ('ce', 'ce_dice')


def _merged_into_background(labelled: jax.Array, num_classes: int) -> jax.Array:
    """Bool, shaped like `labelled` (classes last): class 0 and every unlabelled class."""
    is_background = jnp.arange(num_classes) == 0
    return jnp.logical_or(jnp.logical_not(labelled), is_background)


@jax.jit
def marginal_log_probs(logits: jax.Array, labelled: jax.Array) -> jax.Array:
    """Log-probabilities [B, H, W, K] with unlabelled classes merged into background.

    log p'(0) = logsumexp(logits[{0} ∪ unlabelled]) - logsumexp(logits);
    log p'(c) = log_softmax(logits)[c] for labelled c > 0;
    log p'(c) = NEG_LOG_PROB for unlabelled c > 0.

    Equals `jax.nn.log_softmax(logits)` when every class is labelled.
    """
    num_classes = logits.shape[-1]
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    labelled = jnp.asarray(labelled, bool)[:, None, None, :]
    merged = _merged_into_background(labelled, num_classes)
    background = jax.nn.logsumexp(jnp.where(merged, log_p, NEG_LOG_PROB), axis=-1)
    out = jnp.where(labelled, log_p, NEG_LOG_PROB)
    return out.at[..., 0].set(background)


@jax.jit
def marginal_labels(labels: jax.Array, labelled: jax.Array) -> jax.Array:
    """Class map [B, H, W] with pixels of classes unlabelled for the example set to 0.

    Labels should never hold such pixels; this keeps the losses bounded if they do.
    `fcn_jax.metrics` applies it to predictions too.
    """
    labelled = jnp.asarray(labelled, bool)
    label_is_labelled = jnp.take_along_axis(
        labelled, labels.reshape(labels.shape[0], -1), axis=1, mode='clip'
    ).reshape(labels.shape)
    return jnp.where(label_is_labelled, labels, 0)


@jax.jit
def cross_entropy(logits: jax.Array, labels: jax.Array, labelled: jax.Array, *,
                  class_weights: jax.Array | None = None) -> jax.Array:
    """Per-example mean pixel cross-entropy [B] over the marginal log-probabilities.

    With `class_weights` ([K]) each pixel is weighted by the weight of its true class
    and the sum is divided by the sum of those weights over the example (as torch's
    weighted cross-entropy with reduction='mean'); an example whose weights sum to 0
    gets a loss of 0.
    """
    num_classes = logits.shape[-1]
    labels = marginal_labels(labels.astype(jnp.int32), labelled)
    log_p = marginal_log_probs(logits, labelled)
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    nll = -jnp.sum(one_hot * log_p, axis=-1)  # [B, H, W]
    if class_weights is None:
        return jnp.mean(nll, axis=(1, 2))
    weights = jnp.asarray(class_weights, jnp.float32)[labels]
    total = jnp.sum(weights * nll, axis=(1, 2))
    weight_sum = jnp.sum(weights, axis=(1, 2))
    return jnp.where(weight_sum > 0, total / jnp.where(weight_sum > 0, weight_sum, 1.0), 0.0)


@jax.jit
def soft_dice_loss(logits: jax.Array, labels: jax.Array, labelled: jax.Array, *,
                   eps: float = 1.0) -> jax.Array:
    """Per-example soft Dice loss [B] over the labelled foreground classes.

    With p the marginal probabilities (`marginal_log_probs`), t the one-hot labels and
    sums over the pixels of one example:

        dice_c = (2 * sum(p_c * t_c) + eps) / (sum(p_c) + sum(t_c) + eps)
        loss = 1 - mean(dice_c for foreground classes c >= 1 labelled for the example)

    A class absent from both truth and prediction has dice_c ≈ 1 thanks to eps. An
    example with no labelled foreground class gets a loss of 0.
    """
    num_classes = logits.shape[-1]
    labels = marginal_labels(labels.astype(jnp.int32), labelled)
    probs = jnp.exp(marginal_log_probs(logits, labelled))
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    intersection = jnp.sum(probs * one_hot, axis=(1, 2))  # [B, K]
    denominator = jnp.sum(probs, axis=(1, 2)) + jnp.sum(one_hot, axis=(1, 2))
    dice = (2.0 * intersection + eps) / (denominator + eps)
    counted = jnp.logical_and(jnp.asarray(labelled, bool), jnp.arange(num_classes) > 0)
    counted = counted.astype(jnp.float32)
    num_counted = jnp.sum(counted, axis=-1)
    mean_dice = jnp.sum(dice * counted, axis=-1) / jnp.maximum(num_counted, 1.0)
    return jnp.where(num_counted > 0, 1.0 - mean_dice, 0.0)


@functools.partial(jax.jit, static_argnames=('loss',))
def segmentation_loss(logits: jax.Array, labels: jax.Array, labelled: jax.Array, *,
                      loss: str = 'ce', class_weights: jax.Array | None = None,
                      dice_weight: float = 1.0) -> jax.Array:
    """Per-example training loss [B]: 'ce' or 'ce_dice' (CE + dice_weight * Dice)."""
    if loss not in LOSSES:
        raise ValueError(f'Unknown loss {loss!r}; valid choices: {", ".join(LOSSES)}.')
    value = cross_entropy(logits, labels, labelled, class_weights=class_weights)
    if loss == 'ce_dice':
        value = value + dice_weight * soft_dice_loss(logits, labels, labelled)
    return value
