"""Frechet Inception Distance (Heusel et al. 2017), computed in float64 numpy:

    FID = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^{1/2})

from the 2048-d pool3 activations of the FID InceptionV3 (`casc_jax.metrics.inception`, which also says
where its weights come from).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

# ---------------------------------------------------------------------------------------------
# Frechet distance (float64 numpy)


def activation_statistics(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean `(D,)` and unbiased covariance `(D, D)` (float64) of activations `(N, D)`, N >= 2."""
    acts = np.asarray(acts, np.float64)
    if acts.ndim != 2 or acts.shape[0] < 2:
        raise ValueError(f"activations must be (N, D) with N >= 2, got shape {acts.shape}")
    return acts.mean(axis=0), np.cov(acts, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; tiny negative eigenvalues are clipped."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Sigma_1 Sigma_2)^{1/2}) = Tr((S_1^{1/2} Sigma_2 S_1^{1/2})^{1/2}) for PSD Sigma_1, Sigma_2.

    The symmetric form has the same (non-negative) eigenvalues as Sigma_1 Sigma_2, so it needs no
    complex arithmetic and stays well defined for singular covariances.
    """
    r1 = _psd_sqrt(sigma1)
    m = r1 @ sigma2 @ r1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sum(np.sqrt(np.clip(ev, 0.0, None))))


def _trace_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """pytorch-fid's route: scipy sqrtm of Sigma_1 Sigma_2, eps offset if singular, drop tiny imag."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"sqrtm(Sigma_1 Sigma_2) has a large imaginary part ({np.abs(covmean.imag).max():.3g}); "
                "the covariances are not PSD or are badly conditioned (use more samples)"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    method: str = "eigh",
) -> float:
    """Frechet distance between N(mu1, Sigma_1) and N(mu2, Sigma_2), in float64.

    Args:
      mu1, mu2: `(D,)` means. sigma1, sigma2: `(D, D)` covariances (a scalar/1-D Gaussian is fine).
      eps: diagonal offset used by method="sqrtm" when sqrtm of the product is not finite.
      method: "eigh" (default; symmetric eigen-decomposition form, exact for PSD inputs and robust to
        singular covariances) or "sqrtm" (pytorch-fid's scipy.linalg.sqrtm route).

    Returns:
      ||mu1 - mu2||^2 + Tr(Sigma_1) + Tr(Sigma_2) - 2 Tr((Sigma_1 Sigma_2)^{1/2}) as a float.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, "
            f"sigma2 {sigma2.shape}; expected (D,), (D,), (D, D), (D, D)"
        )
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("Gaussian statistics contain NaN or inf")
    if method == "eigh":
        tr_covmean = trace_sqrt_product(sigma1, sigma2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrtm(sigma1, sigma2, eps)
    else:
        raise ValueError(f"unknown method {method!r}; use 'eigh' or 'sqrtm'")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_activations(acts1: np.ndarray, acts2: np.ndarray, **kwargs: Any) -> float:
    """FID between two activation sets `(N1, D)`, `(N2, D)` (kwargs go to `frechet_distance`)."""
    return frechet_distance(*activation_statistics(acts1), *activation_statistics(acts2), **kwargs)
