"""Channel: power normalisation, AWGN / Rayleigh statistics, CR accounting."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax import channel


def _signal(batch=64, shape=(8, 8, 2), seed=0):
    return jax.random.normal(jax.random.key(seed), (batch,) + shape) * 3.0 + 0.5


def test_complex_round_trip():
    x = _signal(4)
    s = channel.to_complex(x)
    assert s.shape == (4, 64)
    np.testing.assert_array_equal(channel.from_complex(s, x.shape), x)
    # pairs of consecutive reals form one symbol
    flat = np.asarray(x).reshape(4, -1)
    np.testing.assert_allclose(np.asarray(s[0, 0]), flat[0, 0] + 1j * flat[0, 1])


def test_unit_power_per_complex_symbol():
    x = channel.normalize_power(_signal())
    power = np.mean(np.abs(np.asarray(channel.to_complex(x))) ** 2, axis=1)
    np.testing.assert_allclose(power, 1.0, rtol=1e-5)


@pytest.mark.parametrize("snr_db", [0.0, 5.0, 10.0, 20.0])
def test_awgn_measured_snr_matches(snr_db):
    x = channel.normalize_power(_signal(batch=4096))
    y = channel.awgn(jax.random.key(1), x, snr_db)
    noise = np.asarray(y - x, np.float64)
    measured = 10 * np.log10(1.0 / np.mean(noise**2 * 2))  # per complex symbol: E|n|^2 = 2 E[n_re^2]
    assert abs(measured - snr_db) < 0.1


def test_per_sample_snr_mixes_in_one_batch():
    snrs = jnp.array([0.0, 20.0] * 2048)
    x = channel.normalize_power(_signal(batch=snrs.shape[0]))
    noise = np.asarray(channel.awgn(jax.random.key(2), x, snrs) - x, np.float64).reshape(snrs.shape[0], -1)
    for value in (0.0, 20.0):
        rows = noise[np.asarray(snrs) == value]
        measured = 10 * np.log10(1.0 / (2 * np.mean(rows**2)))
        assert abs(measured - value) < 0.1


def test_rayleigh_zf_and_mmse():
    x = channel.normalize_power(_signal(batch=2048))
    key = jax.random.key(3)
    # Noise-free limit: ZF equalisation recovers x exactly.
    y = channel.rayleigh(key, x, 200.0, "zf")
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-4)
    # Unequalised: received power per symbol is E|h|^2 * 1 + sigma^2 = 1 + 0.1 at 10 dB.
    y = channel.rayleigh(key, x, 10.0, "none")
    power = np.mean(np.abs(np.asarray(channel.to_complex(y), np.complex128)) ** 2)
    assert abs(power - 1.1) < 0.05
    # MMSE shrinks towards 0 compared with ZF, so its error is no larger on average.
    zf = channel.rayleigh(key, x, 5.0, "zf")
    mmse = channel.rayleigh(key, x, 5.0, "mmse")
    assert float(jnp.mean((mmse - x) ** 2)) < float(jnp.mean((zf - x) ** 2))


def test_transmit_rejects_unknown_channel_and_bad_snr_shape():
    x = _signal(4)
    with pytest.raises(ValueError, match="unknown channel"):
        channel.transmit(jax.random.key(0), x, 10.0, kind="rician")
    with pytest.raises(ValueError, match="snr_db"):
        channel.transmit(jax.random.key(0), x, jnp.zeros((3,)))


@pytest.mark.parametrize(("cr", "channels", "reals"), [("1/48", 2, 128), ("1/96", 1, 64), ("1/24", 4, 256)])
def test_cr_to_condition_channels(cr, channels, reals):
    image = (32, 32, 3)
    assert channel.condition_channels(cr, image, (8, 8)) == channels
    assert channel.num_reals(Fraction(cr), image) == reals
    assert channel.num_channel_uses(Fraction(cr), image) == reals / 2
    assert channel.compression_ratio(reals, image) == Fraction(cr)


def test_impossible_cr_names_nearest_valid_ratios():
    with pytest.raises(ValueError, match=r"1/48.*1/32|1/32.*1/48"):
        channel.condition_channels("1/40", (32, 32, 3), (8, 8))
    with pytest.raises(ValueError, match="1/96"):
        channel.condition_channels("1/200", (32, 32, 3), (8, 8))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        channel.condition_channels(0, (32, 32, 3), (8, 8))
