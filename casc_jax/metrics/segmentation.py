"""Semantic segmentation metrics from an accumulable confusion matrix.

Usage over a dataset: sum the per-batch confusion matrices, then read the metrics off the total.

    total = sum(np.asarray(confusion_matrix(pred, label, K), np.int64) for pred, label in batches)
    miou(total), pixel_accuracy(total)

Conventions:
- `cm[i, j]` counts pixels with ground truth i predicted as j (rows: ground truth, columns: prediction).
- Pixels whose ground truth is `ignore_index` (255 in PASCAL VOC: void/boundary) are not counted.
- IoU_k = cm[k, k] / (sum_j cm[k, j] + sum_i cm[i, k] - cm[k, k]). mIoU is the mean over the classes
  with a non-zero union, i.e. present in the prediction or the ground truth of the counted pixels;
  classes with union 0 are excluded (their per-class IoU is NaN).
- Counts are int32 inside JAX; accumulate totals in numpy int64 for more than 2^31 pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

VOC_IGNORE_INDEX = 255


def _check_range(name: str, x: jnp.ndarray, num_classes: int, allowed: tuple[int, ...] = ()) -> None:
    """Raise on labels outside [0, num_classes) when x is concrete (inside jit this is skipped)."""
    if isinstance(x, jax.core.Tracer):
        return
    x = np.asarray(x)
    bad = (x < 0) | (x >= num_classes)
    for a in allowed:
        bad &= x != a
    if bad.any():
        raise ValueError(
            f"{name} has labels outside [0, {num_classes}) (e.g. {x[bad].flat[0]}); "
            f"check num_classes or the ignore label"
        )


def confusion_matrix(
    pred: jnp.ndarray, target: jnp.ndarray, num_classes: int, ignore_index: int = VOC_IGNORE_INDEX
) -> jnp.ndarray:
    """Confusion matrix `(K, K)` int32 of predicted vs ground-truth labels.

    Args:
      pred: integer labels `(B, H, W)` (e.g. `argmax` of the logits), values in [0, K).
      target: ground-truth labels `(B, H, W)`, values in [0, K) or `ignore_index`.
      num_classes: K.
      ignore_index: ground-truth value of pixels that are not counted.

    Returns:
      `cm` with `cm[i, j]` = number of counted pixels with ground truth i and prediction j. Jittable
      (K static); out-of-range labels raise ValueError outside jit and are dropped inside it.
    """
    if jnp.shape(pred) != jnp.shape(target):
        raise ValueError(
            f"pred and target must have the same shape, got {jnp.shape(pred)} and {jnp.shape(target)}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    _check_range("pred", pred, num_classes)
    _check_range("target", target, num_classes, allowed=(ignore_index,))
    p = jnp.ravel(jnp.asarray(pred)).astype(jnp.int32)
    t = jnp.ravel(jnp.asarray(target)).astype(jnp.int32)
    valid = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    idx = jnp.where(valid, t * num_classes + p, 0)
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[idx].add(valid.astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def per_class_iou(cm: jnp.ndarray) -> jnp.ndarray:
    """IoU per class `(K,)` from a confusion matrix; NaN for classes with union 0."""
    cm = jnp.asarray(cm, jnp.float32)
    tp = jnp.diagonal(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    return jnp.where(union > 0, tp / jnp.where(union > 0, union, 1.0), jnp.nan)


def miou(cm: jnp.ndarray) -> jnp.ndarray:
    """Mean IoU over the classes with non-zero union (NaN if there is none). Scalar."""
    return jnp.nanmean(per_class_iou(cm))


def pixel_accuracy(cm: jnp.ndarray) -> jnp.ndarray:
    """Fraction of counted pixels whose prediction equals the ground truth. Scalar."""
    cm = jnp.asarray(cm, jnp.float32)
    return jnp.trace(cm) / cm.sum()


def mean_class_accuracy(cm: jnp.ndarray) -> jnp.ndarray:
    """Mean over ground-truth classes present (row sum > 0) of the per-class recall. Scalar."""
    cm = jnp.asarray(cm, jnp.float32)
    rows = cm.sum(axis=1)
    return jnp.nanmean(jnp.where(rows > 0, jnp.diagonal(cm) / jnp.where(rows > 0, rows, 1.0), jnp.nan))


def segmentation_metrics(cm: jnp.ndarray) -> dict[str, float]:
    """{"miou", "pixel_accuracy", "mean_class_accuracy"} as Python floats."""
    return {
        "miou": float(miou(cm)),
        "pixel_accuracy": float(pixel_accuracy(cm)),
        "mean_class_accuracy": float(mean_class_accuracy(cm)),
    }
