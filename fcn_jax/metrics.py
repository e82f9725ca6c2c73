"""Evaluation metrics: per-class confusion matrices summed over the eval set (clu).

As in scenic, IoU and Dice come from a confusion matrix accumulated over the whole
eval set, not from per-batch averages. Because classes are annotated per patient
(`labelled`, bool [B, K]), one confusion matrix is kept per class: `matrix[c]` sums
only the examples whose `labelled[c]` is True, so a patient whose kidneys were not
drawn is left out of the kidney figures. Padded eval examples (`mask` False) are left
out everywhere.

Predictions are read in the marginal view used by the losses: a prediction of a class
not annotated for the example counts as background (`marginal_predictions`).

Usage inside a pmapped eval step (axis_name='batch'):

    update = EvalMetrics.gather_from_model_output(
        loss=per_example_loss, logits=logits, labels=labels, labelled=labelled,
        mask=mask)

and on the host:

    update = flax.jax_utils.unreplicate(update)
    totals = update if totals is None else totals.merge(update)
    figures = summarize(totals.compute())
"""

from typing import ClassVar, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics

from fcn_jax.datasets.ircad.labels import CLASS_NAMES, NUM_CLASSES
from fcn_jax.losses import marginal_labels


@jax.jit
def marginal_predictions(logits: jax.Array, labelled: jax.Array) -> jax.Array:
    """Argmax predictions int32 [B, H, W], with classes not labelled for the example
    mapped to background (class 0)."""
    predictions = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return marginal_labels(predictions, labelled)


def _per_example_confusion(truth: jax.Array, predictions: jax.Array,
                           num_classes: int) -> jax.Array:
    """Int32 [B, K, K] confusion matrices (rows truth, cols prediction), one per example.

    Computed as a one-hot matmul (accelerator friendly). Exact while an example has
    fewer than 2**24 pixels (float32 accumulation).
    """
    batch = truth.shape[0]
    truth = jax.nn.one_hot(truth.reshape(batch, -1), num_classes, dtype=jnp.float32)
    predictions = jax.nn.one_hot(predictions.reshape(batch, -1), num_classes,
                                 dtype=jnp.float32)
    counts = jnp.einsum('bni,bnj->bij', truth, predictions,
                        precision=jax.lax.Precision.HIGHEST)
    return jnp.round(counts).astype(jnp.int32)


@jax.jit
def _confusion_matrices(logits: jax.Array, labels: jax.Array, labelled: jax.Array,
                        mask: jax.Array | None) -> jax.Array:
    """Int32 [K, K, K]: `ConfusionMatrix.matrix` of one batch."""
    num_classes = logits.shape[-1]
    labelled = jnp.asarray(labelled, bool)
    truth = marginal_labels(jnp.asarray(labels, jnp.int32), labelled)
    predictions = marginal_predictions(logits, labelled)
    per_example = _per_example_confusion(truth, predictions, num_classes)
    counted = labelled.at[:, 0].set(True)
    if mask is not None:
        counted = jnp.logical_and(counted, jnp.asarray(mask, bool)[:, None])
    counted = counted.astype(jnp.int32)[:, :, None, None]  # [B, K, 1, 1]
    matrix = jnp.sum(counted * per_example[:, None], axis=0, dtype=jnp.int32)
    return matrix


def _safe_ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, NaN where denominator is 0."""
    return jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1),
                     jnp.nan)


@flax.struct.dataclass
class ConfusionMatrix(metrics.Metric):
    """Per-class confusion matrices, int32 [K, K, K], summed over valid examples.

    `matrix[c]` (rows truth, cols prediction) counts the pixels of the valid examples
    whose `labelled[c]` is True; `matrix[0]` counts every valid example (background is
    always annotated). Truth and predictions are both in the marginal view.

    Counts are int32, so exact: a cell overflows only past 2**31 - 1 pixels, i.e. more
    than 8191 slices of 512x512 pixels (all of 3D-IRCADb-01 is about 2,800 slices).
    `compute` raises OverflowError if a count has wrapped to a negative value.

    K is the class attribute `num_classes` (needed by `empty`); use
    `ConfusionMatrix.with_num_classes(k)` for another number of classes.
    """

    matrix: jax.Array

    num_classes: ClassVar[int] = NUM_CLASSES

    @classmethod
    def with_num_classes(cls, num_classes: int) -> type['ConfusionMatrix']:
        """A subclass for `num_classes` classes."""
        return flax.struct.dataclass(
            type(f'ConfusionMatrix{num_classes}', (cls,), {'num_classes': num_classes}))

    @classmethod
    def empty(cls) -> 'ConfusionMatrix':
        k = cls.num_classes
        return cls(matrix=jnp.zeros((k, k, k), jnp.int32))

    @classmethod
    def from_model_output(cls, *, logits: jax.Array, labels: jax.Array,
                          labelled: jax.Array, mask: jax.Array | None = None,
                          **_) -> 'ConfusionMatrix':
        """From logits [B, H, W, K], int labels [B, H, W] in [0, K), labelled bool [B, K]
        and mask bool [B] (False for padding; None means all valid)."""
        num_classes = logits.shape[-1]
        if num_classes != cls.num_classes:
            raise ValueError(f'logits have {num_classes} classes, {cls.__name__} expects '
                             f'{cls.num_classes}; use ConfusionMatrix.with_num_classes.')
        return cls(matrix=_confusion_matrices(logits, labels, labelled, mask))

    def merge(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
        if self.matrix.shape != other.matrix.shape:
            raise ValueError(f'Cannot merge confusion matrices of shapes '
                             f'{self.matrix.shape} and {other.matrix.shape}.')
        return type(self)(matrix=self.matrix + other.matrix)

    def compute(self) -> dict[str, jax.Array]:
        """Figures from the summed matrices.

        Returns `iou` and `dice` (float32 [K], class c from `matrix[c]` only):
        IoU_c = TP / (TP + FP + FN), Dice_c = 2TP / (2TP + FP + FN), NaN when
        TP + FP + FN == 0 (including a class no eval example annotates);
        `mean_iou` / `mean_dice`: mean over the foreground classes 1..K-1 with a defined
        value (background is excluded: it dominates CT slices and would inflate the
        mean), NaN if none; `pixel_accuracy`: correct / all pixels of the valid
        examples, in the marginal view (from `matrix[0]`), NaN if there are none.
        """
        if not isinstance(self.matrix, jax.core.Tracer) and np.any(np.asarray(self.matrix) < 0):
            raise OverflowError('Confusion matrix count overflowed int32.')
        return _figures(self.matrix)


def _nanmean(values: jax.Array) -> jax.Array:
    """Mean of the non-NaN entries; NaN when all are NaN (no warning)."""
    defined = jnp.logical_not(jnp.isnan(values))
    count = jnp.sum(defined)
    return _safe_ratio(jnp.sum(jnp.where(defined, values, 0.0)), count)


@jax.jit
def _figures(matrix: jax.Array) -> dict[str, jax.Array]:
    """`ConfusionMatrix.compute` from the int32 [K, K, K] matrices."""
    matrix = matrix.astype(jnp.float32)
    classes = jnp.arange(matrix.shape[0])
    true_positive = matrix[classes, classes, classes]
    truth_total = jnp.sum(matrix[classes, classes, :], axis=-1)  # row c of matrix[c]
    predicted_total = jnp.sum(matrix[classes, :, classes], axis=-1)  # column c
    false_positive = predicted_total - true_positive
    false_negative = truth_total - true_positive
    iou = _safe_ratio(true_positive, true_positive + false_positive + false_negative)
    dice = _safe_ratio(2 * true_positive,
                       2 * true_positive + false_positive + false_negative)
    pixel_accuracy = _safe_ratio(jnp.trace(matrix[0]), jnp.sum(matrix[0]))
    return {
        'iou': iou,
        'dice': dice,
        'mean_iou': _nanmean(iou[1:]),
        'mean_dice': _nanmean(dice[1:]),
        'pixel_accuracy': pixel_accuracy,
    }


def eval_metrics_class(num_classes: int = NUM_CLASSES) -> type[metrics.Collection]:
    """The eval metrics collection for `num_classes` classes: see `EvalMetrics`."""
    confusion = (ConfusionMatrix if num_classes == ConfusionMatrix.num_classes
                 else ConfusionMatrix.with_num_classes(num_classes))
    return metrics.Collection.create(loss=metrics.Average.from_output('loss'),
                                     confusion=confusion)


# Model outputs: loss [B] (per example), logits, labels, labelled, mask [B]. The loss
# is averaged over valid examples only (clu forwards `mask` to Average).
EvalMetrics = eval_metrics_class(NUM_CLASSES)

# Model outputs: loss (per example [B] or a scalar).
TrainMetrics = metrics.Collection.create(loss=metrics.Average.from_output('loss'))


def summarize(computed: Mapping[str, object],
              class_names: Sequence[str] = CLASS_NAMES) -> dict[str, float]:
    """Flat dict of floats from `EvalMetrics.compute()`.

    Keys: loss, pixel_accuracy, mean_iou, mean_dice, then iou_<name> and dice_<name>
    for each foreground class (class_names[1:]). Undefined figures are NaN.
    """
    confusion = computed['confusion']
    iou = np.asarray(confusion['iou'], np.float64)
    dice = np.asarray(confusion['dice'], np.float64)
    if len(class_names) != len(iou):
        raise ValueError(f'{len(class_names)} class names for {len(iou)} classes.')
    summary = {
        'loss': float(computed['loss']),
        'pixel_accuracy': float(confusion['pixel_accuracy']),
        'mean_iou': float(confusion['mean_iou']),
        'mean_dice': float(confusion['mean_dice']),
    }
    for name, figure in (('iou', iou), ('dice', dice)):
        for class_id, class_name in enumerate(class_names[1:], start=1):
            summary[f'{name}_{class_name}'] = float(figure[class_id])
    return summary
