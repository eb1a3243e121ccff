"""Shared evaluation metrics: PSNR/MSE, LPIPS, FID and segmentation (mIoU), used by both systems."""

from casc_jax.metrics.fid import activation_statistics, fid_from_activations, frechet_distance
from casc_jax.metrics.image import mse, psnr
from casc_jax.metrics.inception import (
    InceptionV3FID,
    convert_pytorch_fid_npz,
    convert_pytorch_fid_state_dict,
    inception_weights_path,
    load_inception,
    load_inception_variables,
    random_inception_variables,
    save_inception_weights,
)
from casc_jax.metrics.lpips import LPIPS, load_lpips, load_lpips_params
from casc_jax.metrics.segmentation import (
    confusion_matrix,
    mean_class_accuracy,
    miou,
    per_class_iou,
    pixel_accuracy,
    segmentation_metrics,
)

__all__ = [
    "LPIPS",
    "InceptionV3FID",
    "activation_statistics",
    "confusion_matrix",
    "convert_pytorch_fid_npz",
    "convert_pytorch_fid_state_dict",
    "fid_from_activations",
    "frechet_distance",
    "inception_weights_path",
    "load_inception",
    "load_inception_variables",
    "load_lpips",
    "load_lpips_params",
    "mean_class_accuracy",
    "miou",
    "mse",
    "per_class_iou",
    "pixel_accuracy",
    "psnr",
    "random_inception_variables",
    "save_inception_weights",
    "segmentation_metrics",
]
