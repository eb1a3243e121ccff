"""Gray QAM and soft demapping against 38.211's formulas, float64 references and closed-form BERs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multitask_jax.digital import qam

MODS = ("qpsk", "16qam", "64qam")


def _ts38211(bits):
    """38.211 5.1 formulas, written out per order."""
    b = 1 - 2 * np.asarray(bits, float)
    if len(bits) == 2:
        return (b[0] + 1j * b[1]) / math.sqrt(2)
    if len(bits) == 4:
        return (b[0] * (2 - b[2]) + 1j * b[1] * (2 - b[3])) / math.sqrt(10)
    return (b[0] * (4 - b[2] * (2 - b[4])) + 1j * b[1] * (4 - b[3] * (2 - b[5]))) / math.sqrt(42)


@pytest.mark.parametrize("mod", MODS)
def test_constellation_is_38211_gray_unit_energy(mod):
    pts, bits = qam.constellation(mod)
    assert np.allclose([_ts38211(b) for b in bits], pts)
    assert np.isclose(np.mean(np.abs(pts) ** 2), 1.0)
    d = np.abs(pts[:, None] - pts[None])
    dmin = d[d > 1e-9].min()
    for i, j in np.argwhere(np.isclose(d, dmin)):
        assert np.sum(bits[i] != bits[j]) == 1  # Gray: nearest neighbours differ in one bit
    syms = np.asarray(qam.modulate(jnp.asarray(bits.reshape(1, -1)), mod))[0]
    assert np.allclose(syms, pts, atol=1e-6)


@pytest.mark.parametrize("mod", MODS)
def test_demapper_matches_float64_reference(mod):
    pts, bits = qam.constellation(mod)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(3, 50)) * 0.8 + 1j * rng.normal(size=(3, 50)) * 0.8
    var = np.array([[0.05], [0.3], [1.5]])
    metric = -np.abs(y[..., None] - pts) ** 2 / var[..., None]  # (3, 50, M), full 2-D constellation
    for method, red in (("exact", lambda m, a: np.logaddexp.reduce(m, axis=a)), ("maxlog", np.max)):
        ref = np.stack([red(np.where(bits[:, k] == 0, metric, -np.inf), -1)
                        - red(np.where(bits[:, k] == 1, metric, -np.inf), -1) for k in range(bits.shape[1])], -1)
        got = np.asarray(qam.demap(jnp.asarray(y, jnp.complex64), jnp.asarray(var), mod, method))
        np.testing.assert_allclose(got, ref.reshape(3, -1), rtol=2e-4, atol=2e-3)


def _q(x):
    return 0.5 * math.erfc(x / math.sqrt(2))


def gray_qam_ber(mod, snr_db):
    """Closed form: nearest-symbol detection of Gray M-QAM on AWGN, a sum of Q functions per PAM axis."""
    qm = {"qpsk": 2, "16qam": 4, "64qam": 6}[mod]
    levels, labels = qam.pam_levels(qm // 2)
    levels = levels / math.sqrt(2 * np.mean(levels**2))
    order = np.argsort(levels)
    lv, lab = levels[order], labels[order]
    s = math.sqrt(10 ** (-snr_db / 10) / 2)
    edges = np.concatenate([[-np.inf], (lv[1:] + lv[:-1]) / 2, [np.inf]])
    err = 0.0
    for t in range(len(lv)):
        for m in range(len(lv)):
            p = _q((edges[m] - lv[t]) / s) - _q((edges[m + 1] - lv[t]) / s)
            err += p * np.sum(lab[m] != lab[t])
    return err / (len(lv) * lab.shape[1])


def _simulate(mod, snr_db, method, n_sym, kind="awgn", batch=None, seed=0, equalizer="zf"):
    qm = {"qpsk": 2, "16qam": 4, "64qam": 6}[mod]
    batch = batch or 1
    kb, kc = jax.random.split(jax.random.key(seed))
    bits = jax.random.bernoulli(kb, 0.5, (batch, n_sym * qm)).astype(jnp.int32)
    y, var = qam.transmit_symbols(kc, qam.modulate(bits, mod), snr_db, kind, equalizer)
    llr = qam.demap(y, var, mod, method)
    return float(jnp.mean((llr < 0) != (bits == 1))), llr


@pytest.mark.parametrize("mod, snr_db", [("qpsk", 4.0), ("16qam", 10.0), ("64qam", 16.0), ("16qam", 4.0)])
def test_uncoded_ber_awgn_matches_closed_form(mod, snr_db):
    ref = gray_qam_ber(mod, snr_db)
    n_bits = 300_000
    tol = 4 * math.sqrt(ref * (1 - ref) / n_bits) * 1.5  # 4 sigma, bits within a symbol are correlated
    ber, _ = _simulate(mod, snr_db, "maxlog", n_bits // {"qpsk": 2, "16qam": 4, "64qam": 6}[mod])
    assert abs(ber - ref) < tol, (ber, ref)
    ber_exact, _ = _simulate(mod, snr_db, "exact", n_bits // {"qpsk": 2, "16qam": 4, "64qam": 6}[mod])
    assert abs(ber_exact - ref) < tol + 0.02 * ref, (ber_exact, ref)  # bitwise MAP ~ nearest symbol here


def test_uncoded_ber_rayleigh_qpsk_closed_form():
    snr_db = 10.0
    gamma_b = 10 ** (snr_db / 10) / 2  # Eb/N0 of QPSK at Es/N0 = SNR
    ref = 0.5 * (1 - math.sqrt(gamma_b / (1 + gamma_b)))
    batch = 40_000  # one fade per sample: the Monte-Carlo error is set by the number of fades
    ber, _ = _simulate("qpsk", snr_db, "exact", 8, kind="rayleigh", batch=batch)
    assert abs(ber - ref) < 4 * math.sqrt(ref / batch) * 2, (ber, ref)


def test_llrs_are_the_same_for_every_equalizer():
    eqs = ("zf", "mmse", "none")
    llrs = [_simulate("16qam", 8.0, "exact", 16, "rayleigh", 64, seed=3, equalizer=e)[1] for e in eqs]
    for other in llrs[1:]:
        np.testing.assert_allclose(np.asarray(other), np.asarray(llrs[0]), rtol=1e-3, atol=1e-3)
