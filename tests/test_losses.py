"""Tests for fcn_jax.losses (marginal losses for partially labelled slices)."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

from fcn_jax import losses  # noqa: E402

K = 4
KIDNEY = 3
B, H, W = 3, 5, 6


def random_batch(seed: int = 0, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((B, H, W, K))).astype(np.float32)
    labels = rng.integers(0, K, size=(B, H, W)).astype(np.int32)
    return logits, labels


def kidney_unlabelled(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """labelled [B, K] with kidney unannotated for examples 1 and 2, labels to match."""
    labelled = np.ones((B, K), bool)
    labelled[1:, KIDNEY] = False
    labels = labels.copy()
    labels[1:][labels[1:] == KIDNEY] = 0
    return labels, labelled


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_marginal_probs(logits: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """Reference: softmax, then add every unlabelled class's probability to class 0."""
    p = np.exp(np_log_softmax(logits))
    out = np.zeros_like(p)
    for b in range(p.shape[0]):
        for c in range(K):
            target = c if labelled[b, c] or c == 0 else 0
            out[b, ..., target] += p[b, ..., c]
    return out


def test_marginal_log_probs_is_log_softmax_when_all_labelled():
    logits, _ = random_batch()
    labelled = np.ones((B, K), bool)
    np.testing.assert_allclose(losses.marginal_log_probs(logits, labelled),
                               jax.nn.log_softmax(logits), rtol=1e-6, atol=1e-6)


def test_marginal_log_probs_merges_unlabelled_mass_into_background():
    logits, labels = random_batch(1)
    _, labelled = kidney_unlabelled(labels)
    log_p = np.asarray(losses.marginal_log_probs(logits, labelled))
    np.testing.assert_allclose(np.exp(log_p), np_marginal_probs(logits, labelled),
                               rtol=1e-5, atol=1e-7)
    # Unlabelled classes: very negative but finite; labelled ones keep log_softmax.
    assert np.all(np.isfinite(log_p))
    assert np.all(log_p[1:, ..., KIDNEY] <= -1e8)
    np.testing.assert_allclose(log_p[0], np_log_softmax(logits[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_p[1:, ..., 1:KIDNEY], np_log_softmax(logits[1:])[..., 1:KIDNEY],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.exp(log_p).sum(-1), 1.0, rtol=1e-5)


def test_cross_entropy_equals_optax_when_all_labelled():
    logits, labels = random_batch(2)
    labelled = np.ones((B, K), bool)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(axis=(1, 2))
    got = losses.cross_entropy(logits, labels, labelled)
    assert got.shape == (B,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_moving_mass_between_unlabelled_kidney_and_background_is_free():
    logits, labels = random_batch(3)
    labels, labelled = kidney_unlabelled(labels)
    # Same probabilities, except that background and kidney share their joint mass
    # differently: 10% background / 90% kidney.
    p = np.exp(np_log_softmax(logits))
    joint = p[..., 0] + p[..., KIDNEY]
    q = p.copy()
    q[..., 0], q[..., KIDNEY] = 0.1 * joint, 0.9 * joint
    shifted = np.log(q).astype(np.float32)
    for fn in (losses.cross_entropy, losses.soft_dice_loss):
        before, after = np.asarray(fn(logits, labels, labelled)), np.asarray(
            fn(shifted, labels, labelled))
        # Unlabelled-kidney examples: unchanged. Example 0 (kidney labelled): changed.
        np.testing.assert_allclose(after[1:], before[1:], rtol=1e-5, atol=1e-6)
        assert abs(after[0] - before[0]) > 1e-3


def test_predicting_unlabelled_kidney_on_background_costs_nothing_extra():
    labels = np.zeros((B, H, W), np.int32)
    labels[:, :2] = 1  # some liver
    labelled = np.ones((B, K), bool)
    labelled[:, KIDNEY] = False
    confident = 8.0 * np.eye(K, dtype=np.float32)
    says_background = confident[labels]
    says_kidney = says_background.copy()
    says_kidney[:, 2:] = confident[KIDNEY]  # kidney where the truth is background
    for fn in (losses.cross_entropy, losses.soft_dice_loss):
        np.testing.assert_allclose(fn(says_kidney, labels, labelled),
                                   fn(says_background, labels, labelled), rtol=1e-6, atol=1e-6)
    # With kidney annotated, the same prediction is penalised.
    all_labelled = np.ones((B, K), bool)
    assert np.all(losses.cross_entropy(says_kidney, labels, all_labelled)
                  > losses.cross_entropy(says_background, labels, all_labelled) + 1.0)


def test_weighted_cross_entropy_matches_numpy_reference():
    logits, labels = random_batch(4)
    labels, labelled = kidney_unlabelled(labels)
    weights = np.array([0.2, 1.0, 2.0, 5.0], np.float32)
    nll = -np.log(np.take_along_axis(np_marginal_probs(logits, labelled), labels[..., None],
                                     axis=-1)[..., 0])
    w = weights[labels]
    expected = (w * nll).sum(axis=(1, 2)) / w.sum(axis=(1, 2))
    got = losses.cross_entropy(logits, labels, labelled, class_weights=jnp.asarray(weights))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Uniform weights give the unweighted loss.
    np.testing.assert_allclose(
        losses.cross_entropy(logits, labels, labelled, class_weights=np.full(K, 3.0)),
        losses.cross_entropy(logits, labels, labelled), rtol=1e-5)


def test_soft_dice_matches_numpy_reference():
    logits, labels = random_batch(5)
    labels, labelled = kidney_unlabelled(labels)
    labelled[2, 2] = False  # bone unannotated too for example 2
    labels[2][labels[2] == 2] = 0
    eps = 1.0
    p = np_marginal_probs(logits, labelled)
    expected = []
    for b in range(B):
        dices = []
        for c in range(1, K):
            if not labelled[b, c]:
                continue
            t = (labels[b] == c).astype(np.float64)
            dices.append((2 * (p[b, ..., c] * t).sum() + eps)
                         / (p[b, ..., c].sum() + t.sum() + eps))
        expected.append(1.0 - np.mean(dices))
    got = losses.soft_dice_loss(logits, labels, labelled, eps=eps)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_soft_dice_perfect_prediction_and_absent_classes():
    labels = np.zeros((B, H, W), np.int32)
    labels[:, 1:3, 1:3] = 1  # liver only; bone and kidney absent from truth
    logits = 30.0 * np.eye(K, dtype=np.float32)[labels]
    got = losses.soft_dice_loss(logits, labels, np.ones((B, K), bool))
    np.testing.assert_allclose(got, 0.0, atol=1e-5)


def test_segmentation_loss_choices():
    logits, labels = random_batch(6)
    labels, labelled = kidney_unlabelled(labels)
    ce = losses.cross_entropy(logits, labels, labelled)
    dice = losses.soft_dice_loss(logits, labels, labelled)
    np.testing.assert_allclose(losses.segmentation_loss(logits, labels, labelled), ce)
    np.testing.assert_allclose(
        losses.segmentation_loss(logits, labels, labelled, loss='ce_dice', dice_weight=0.5),
        ce + 0.5 * dice, rtol=1e-6)
    with pytest.raises(ValueError, match='ce, ce_dice'):
        losses.segmentation_loss(logits, labels, labelled, loss='focal')


def test_bfloat16_logits_give_float32_loss_under_jit():
    logits, labels = random_batch(7)
    labels, labelled = kidney_unlabelled(labels)
    fn = jax.jit(lambda x: losses.segmentation_loss(x, labels, labelled, loss='ce_dice'))
    got = fn(jnp.asarray(logits, jnp.bfloat16))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(
        got, losses.segmentation_loss(logits, labels, labelled, loss='ce_dice'), rtol=2e-2)


def test_unlabelled_class_in_labels_is_read_as_background():
    logits, labels = random_batch(8)
    labelled = np.ones((B, K), bool)
    labelled[:, KIDNEY] = False
    mapped = np.where(labels == KIDNEY, 0, labels)
    np.testing.assert_array_equal(losses.marginal_labels(labels, labelled), mapped)
    np.testing.assert_allclose(losses.cross_entropy(logits, labels, labelled),
                               losses.cross_entropy(logits, mapped, labelled))


@pytest.mark.parametrize('name', ['ce', 'ce_dice', 'ce_weighted', 'dice'])
def test_gradients_are_finite(name):
    logits, labels = random_batch(9, scale=20.0)  # confident logits stress log-space maths
    labels, labelled = kidney_unlabelled(labels)
    labelled[2, 2] = False
    weights = np.array([0.5, 1.0, 1.0, 4.0], np.float32)

    def total(x):
        if name == 'dice':
            return losses.soft_dice_loss(x, labels, labelled).sum()
        if name == 'ce_weighted':
            return losses.cross_entropy(x, labels, labelled, class_weights=weights).sum()
        return losses.segmentation_loss(x, labels, labelled, loss=name).sum()

    grads = jax.grad(total)(jnp.asarray(logits))
    assert np.all(np.isfinite(grads))
    assert np.any(grads != 0)
    # Unlabelled kidney logits get exactly the gradient of the background logit's share:
    # they only act through the merged background probability, never through their own.
    if name == 'ce':
        p = np.exp(np_log_softmax(logits))
        g = np.asarray(grads)
        share = p[1:, ..., KIDNEY] / (p[1:, ..., 0] + p[1:, ..., KIDNEY])
        back = g[1:, ..., 0] + g[1:, ..., KIDNEY]
        np.testing.assert_allclose(g[1:, ..., KIDNEY], share * back, rtol=1e-3, atol=1e-7)
