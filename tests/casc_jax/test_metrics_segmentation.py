"""Confusion matrix, mIoU and pixel accuracy: a hand-worked example and a float64 numpy reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax.metrics import (
    confusion_matrix,
    mean_class_accuracy,
    miou,
    per_class_iou,
    pixel_accuracy,
    segmentation_metrics,
)

# Hand-worked example, K = 3, 255 = ignore.
#   target = [[0, 0, 1, 255],      pred = [[0, 1, 1, 2],
#             [1, 2, 2, 2  ]]              [1, 2, 0, 2]]
# Counted (gt, pred) pairs (the 255 pixel is dropped): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (2,2)
#   cm (rows gt, cols pred) = [[1, 1, 0],
#                              [0, 2, 0],
#                              [1, 0, 2]]
#   IoU_0 = 1 / (row 2 + col 2 - 1) = 1/3
#   IoU_1 = 2 / (row 2 + col 3 - 2) = 2/3
#   IoU_2 = 2 / (row 3 + col 2 - 2) = 2/3
#   mIoU = (1/3 + 2/3 + 2/3) / 3 = 5/9;  pixel accuracy = (1 + 2 + 2) / 7 = 5/7
#   mean class accuracy = (1/2 + 2/2 + 2/3) / 3 = 13/18
TARGET = np.array([[[0, 0, 1, 255], [1, 2, 2, 2]]])
PRED = np.array([[[0, 1, 1, 2], [1, 2, 0, 2]]])
CM = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 2]])


def test_hand_worked_example():
    cm = confusion_matrix(PRED, TARGET, 3)
    np.testing.assert_array_equal(np.asarray(cm), CM)
    np.testing.assert_allclose(np.asarray(per_class_iou(cm)), [1 / 3, 2 / 3, 2 / 3], rtol=1e-6)
    assert float(miou(cm)) == pytest.approx(5 / 9, rel=1e-6)
    assert float(pixel_accuracy(cm)) == pytest.approx(5 / 7, rel=1e-6)
    assert float(mean_class_accuracy(cm)) == pytest.approx(13 / 18, rel=1e-6)
    assert segmentation_metrics(cm) == pytest.approx(
        {"miou": 5 / 9, "pixel_accuracy": 5 / 7, "mean_class_accuracy": 13 / 18}, rel=1e-6
    )


def test_classes_with_zero_union_are_excluded():
    # K = 5: classes 3 and 4 appear in neither prediction nor ground truth -> NaN IoU, excluded.
    cm = confusion_matrix(PRED, TARGET, 5)
    iou = np.asarray(per_class_iou(cm))
    assert np.isnan(iou[3]) and np.isnan(iou[4])
    assert float(miou(cm)) == pytest.approx(5 / 9, rel=1e-6)
    # a class predicted but absent from the ground truth counts with IoU 0:
    # pred 4 at the (gt 2, pred 0) pixel -> IoU_0 = 1/2, IoU_2 = 2/3, IoU_4 = 0, IoU_1 = 2/3
    pred = PRED.copy()
    pred[0, 1, 2] = 4
    cm = confusion_matrix(pred, TARGET, 5)
    assert float(miou(cm)) == pytest.approx((1 / 2 + 2 / 3 + 2 / 3 + 0) / 4, rel=1e-6)
    # nothing counted at all -> NaN
    assert np.isnan(float(miou(confusion_matrix(PRED, np.full_like(TARGET, 255), 3))))


def _np_reference(pred, target, k, ignore=255):
    cm = np.zeros((k, k), np.int64)
    for t, p in zip(target.ravel(), pred.ravel(), strict=True):
        if t != ignore:
            cm[t, p] += 1
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    return cm, iou.mean(), tp.sum() / cm.sum()


def test_against_numpy_and_accumulation():
    rng = np.random.default_rng(0)
    k = 21
    target = rng.integers(0, k, (4, 24, 20))
    target[rng.random(target.shape) < 0.1] = 255  # VOC void pixels
    noise = rng.integers(0, k, target.shape)
    pred = np.where(rng.random(target.shape) < 0.6, np.where(target == 255, 0, target), noise)
    cm_ref, miou_ref, acc_ref = _np_reference(pred, target, k)
    # accumulate over two batches
    total = sum(np.asarray(confusion_matrix(pred[i : i + 2], target[i : i + 2], k), np.int64) for i in (0, 2))
    np.testing.assert_array_equal(total, cm_ref)
    assert float(miou(total)) == pytest.approx(miou_ref, rel=1e-6)
    assert float(pixel_accuracy(total)) == pytest.approx(acc_ref, rel=1e-6)
    # jitted (num_classes static) gives the same matrix
    cm_fn = jax.jit(functools.partial(confusion_matrix, num_classes=k))
    cm_jit = cm_fn(jnp.asarray(pred), jnp.asarray(target))
    np.testing.assert_array_equal(np.asarray(cm_jit), cm_ref)


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(PRED, TARGET[:, :1], 3)
    with pytest.raises(ValueError, match="pred has labels outside"):
        confusion_matrix(PRED + 1, TARGET, 3)
    with pytest.raises(ValueError, match="target has labels outside"):
        confusion_matrix(PRED, np.where(TARGET == 1, 7, TARGET), 3)
