"""Tests for fcn_jax.metrics (per-class confusion matrices, clu collections)."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')

import math  # noqa: E402

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fcn_jax import metrics  # noqa: E402

K = 4
KIDNEY = 3

# Example 0: every class annotated.
TRUTH_0 = [[0, 1, 1],
           [0, 1, 2],
           [3, 3, 2]]
PRED_0 = [[0, 1, 0],
          [1, 1, 2],
          [3, 0, 2]]
# Example 1: kidney not annotated; its two kidney predictions count as background.
TRUTH_1 = [[0, 0, 1],
           [0, 2, 2],
           [0, 0, 0]]
PRED_1 = [[3, 0, 1],
          [0, 2, 3],
          [1, 0, 0]]
# Example 2: padding; everything wrong, must not count anywhere.
TRUTH_2 = [[3, 3, 3], [1, 1, 1], [2, 2, 2]]
PRED_2 = [[0, 0, 0], [0, 0, 0], [0, 0, 0]]

# Hand-counted confusion matrices (rows truth, cols prediction, marginal view).
CONFUSION_0 = np.array([[1, 1, 0, 0],
                        [1, 2, 0, 0],
                        [0, 0, 2, 0],
                        [1, 0, 0, 1]])
CONFUSION_1 = np.array([[5, 1, 0, 0],
                        [0, 1, 0, 0],
                        [1, 0, 1, 0],
                        [0, 0, 0, 0]])
BOTH = CONFUSION_0 + CONFUSION_1
EXPECTED_MATRIX = np.stack([BOTH, BOTH, BOTH, CONFUSION_0])  # kidney: example 0 only

SUMMARY_KEYS = ['loss', 'pixel_accuracy', 'mean_iou', 'mean_dice', 'iou_liver', 'iou_bone',
                'iou_kidney', 'dice_liver', 'dice_bone', 'dice_kidney']


def batch(indices=(0, 1, 2)) -> dict[str, np.ndarray]:
    truth = np.array([TRUTH_0, TRUTH_1, TRUTH_2], np.int32)
    pred = np.array([PRED_0, PRED_1, PRED_2], np.int32)
    labelled = np.ones((3, K), bool)
    labelled[1, KIDNEY] = False
    rng = np.random.default_rng(0)
    # Argmax of these logits is `pred`, with noise on the other classes.
    logits = rng.uniform(-1, 1, size=(3, 3, 3, K)).astype(np.float32)
    logits += 5.0 * np.eye(K, dtype=np.float32)[pred]
    outputs = dict(logits=logits, labels=truth, labelled=labelled,
                   mask=np.array([True, True, False]),
                   loss=np.array([1.0, 2.0, 100.0], np.float32))
    return {k: v[list(indices)] for k, v in outputs.items()}


def test_marginal_predictions_map_unlabelled_classes_to_background():
    b = batch()
    got = np.asarray(metrics.marginal_predictions(b['logits'], b['labelled']))
    np.testing.assert_array_equal(got[0], PRED_0)
    np.testing.assert_array_equal(got[1], np.where(np.array(PRED_1) == KIDNEY, 0, PRED_1))
    np.testing.assert_array_equal(got[2], PRED_2)
    assert got.dtype == np.int32


def test_confusion_matrix_hand_counted():
    m = metrics.ConfusionMatrix.from_model_output(**batch())
    assert m.matrix.dtype == jnp.int32
    np.testing.assert_array_equal(m.matrix, EXPECTED_MATRIX)


def test_figures_hand_computed():
    computed = metrics.ConfusionMatrix.from_model_output(**batch()).compute()
    # liver: TP 3, FP 2, FN 1; bone: TP 3, FP 0, FN 1; kidney (ex. 0 only): TP 1, FP 0, FN 1.
    np.testing.assert_allclose(computed['iou'][1:], [3 / 6, 3 / 4, 1 / 2], rtol=1e-6)
    np.testing.assert_allclose(computed['dice'][1:], [6 / 9, 6 / 7, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(computed['iou'][0], 6 / 11, rtol=1e-6)  # background: 6, 3, 2
    np.testing.assert_allclose(computed['pixel_accuracy'], 13 / 18, rtol=1e-6)
    np.testing.assert_allclose(computed['mean_iou'], (1 / 2 + 3 / 4 + 1 / 2) / 3, rtol=1e-6)
    np.testing.assert_allclose(computed['mean_dice'], (2 / 3 + 6 / 7 + 2 / 3) / 3, rtol=1e-6)


def test_eval_metrics_summary():
    collection = metrics.EvalMetrics.single_from_model_output(**batch())
    summary = metrics.summarize(collection.compute())
    assert list(summary) == SUMMARY_KEYS
    assert all(isinstance(v, float) for v in summary.values())
    expected = {'loss': 1.5, 'pixel_accuracy': 13 / 18, 'iou_liver': 0.5, 'iou_bone': 0.75,
                'iou_kidney': 0.5, 'dice_liver': 2 / 3, 'dice_bone': 6 / 7,
                'dice_kidney': 2 / 3, 'mean_iou': 1.75 / 3, 'mean_dice': (4 / 3 + 6 / 7) / 3}
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, rel=1e-6), key


def test_class_never_annotated_is_nan_and_left_out_of_means():
    b = batch((1,))  # the example without kidney annotation only
    summary = metrics.summarize(metrics.EvalMetrics.single_from_model_output(**b).compute())
    assert math.isnan(summary['iou_kidney']) and math.isnan(summary['dice_kidney'])
    # liver: TP 1, FP 1, FN 0; bone: TP 1, FP 0, FN 1.
    assert summary['mean_iou'] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert summary['mean_dice'] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert summary['pixel_accuracy'] == pytest.approx(7 / 9)


def test_class_absent_from_truth_and_prediction_is_nan():
    b = batch((0,))
    b['labels'][:] = 0
    b['logits'] = 5.0 * np.eye(K, dtype=np.float32)[np.zeros((1, 3, 3), int)]
    computed = metrics.ConfusionMatrix.from_model_output(**b).compute()
    assert np.all(np.isnan(computed['iou'][1:])) and np.isnan(computed['mean_iou'])
    assert computed['iou'][0] == 1.0 and computed['pixel_accuracy'] == 1.0


def test_merge_of_two_batches_equals_one_batch_of_both():
    one = metrics.EvalMetrics.single_from_model_output(**batch((0, 1, 2)))
    first = metrics.EvalMetrics.single_from_model_output(**batch((0,)))
    second = metrics.EvalMetrics.single_from_model_output(**batch((1, 2)))
    merged = metrics.EvalMetrics.empty().merge(first).merge(second)
    np.testing.assert_array_equal(merged.confusion.matrix, one.confusion.matrix)
    assert metrics.summarize(merged.compute()) == pytest.approx(metrics.summarize(one.compute()))


def test_pmap_gather_equals_single_device():
    if jax.local_device_count() < 2:
        pytest.skip('needs 2 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=2)')
    b = batch((0, 1, 2, 0))  # 4 examples: 2 per device, padding on device 1
    b['mask'][3] = True
    sharded = jax.tree_util.tree_map(lambda x: x.reshape((2, 2) + x.shape[1:]), b)

    def eval_step(outputs):
        return metrics.EvalMetrics.gather_from_model_output(axis_name='batch', **outputs)

    replicated = jax.pmap(eval_step, axis_name='batch')(sharded)
    np.testing.assert_array_equal(replicated.confusion.matrix[0],
                                  replicated.confusion.matrix[1])
    gathered = flax.jax_utils.unreplicate(replicated)
    single = metrics.EvalMetrics.single_from_model_output(**b)
    np.testing.assert_array_equal(gathered.confusion.matrix, single.confusion.matrix)
    np.testing.assert_array_equal(gathered.confusion.matrix,
                                  EXPECTED_MATRIX + CONFUSION_0[None])
    assert metrics.summarize(gathered.compute()) == pytest.approx(
        metrics.summarize(single.compute()))
    assert float(gathered.compute()['loss']) == pytest.approx(4 / 3)  # (1 + 2 + 1) / 3


def test_train_metrics_average_loss():
    m = metrics.TrainMetrics.single_from_model_output(loss=jnp.array([1.0, 3.0]))
    m = m.merge(metrics.TrainMetrics.single_from_model_output(loss=jnp.array(5.0)))
    assert float(m.compute()['loss']) == pytest.approx(3.0)


def test_other_number_of_classes():
    collection = metrics.eval_metrics_class(3)
    b = batch((0,))
    b['logits'] = 5.0 * np.eye(3, dtype=np.float32)[np.minimum([PRED_0], 2)]
    b['labels'] = np.minimum(b['labels'], 2)  # kidney pixels become bone
    b['labelled'] = b['labelled'][:, :3]
    computed = collection.empty().merge(collection.single_from_model_output(**b)).compute()
    summary = metrics.summarize(computed, class_names=('background', 'liver', 'bone'))
    # bone: TP 3, FP 0, FN 1.
    assert 'iou_kidney' not in summary and summary['iou_bone'] == pytest.approx(0.75)
    with pytest.raises(ValueError, match='classes'):
        metrics.ConfusionMatrix.from_model_output(**b)


def test_overflow_is_reported():
    broken = metrics.ConfusionMatrix(matrix=jnp.full((K, K, K), -5, jnp.int32))
    with pytest.raises(OverflowError):
        broken.compute()
