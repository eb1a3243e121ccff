"""JPEG at the highest quality that fits, and the end-to-end digital link's delivery and failure flags."""

import jax
import numpy as np
import pytest

from multitask_jax.digital import jpeg
from multitask_jax.digital.budget import Budget
from multitask_jax.digital.link import DigitalLink


@pytest.fixture(scope="module")
def images():
    data = np.load("casc_jax/assets/cifar10_test_200.npz")
    return data["images"][:6]


def test_fit_quality_is_the_highest_that_fits(images):
    budget_bits = 6000
    for im in images[:3]:
        q, data = jpeg.fit_quality(im, budget_bits)
        assert q > 0 and 8 * len(data) <= budget_bits
        assert all(8 * len(jpeg.encode(im, h)) > budget_bits for h in range(q + 1, 96))
        out = jpeg.decode(data, im.shape)
        assert out.shape == im.shape and np.abs(out.astype(int) - im).mean() < 40
    assert jpeg.fit_quality(images[0], 100) == (0, b"")  # not even the headers fit
    assert jpeg.decode(b"\xff\xd8 not a jpeg", images[0].shape) is None
    bits = jpeg.bytes_to_bits(b"\x81\x01", 20)
    assert bits.tolist() == [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="lower the JPEG quality"):
        jpeg.bytes_to_bits(b"\x00" * 3, 20)


def test_plan_stays_within_budget():
    for mod, qm in (("qpsk", 2), ("16qam", 4), ("64qam", 6)):
        link = DigitalLink(Budget(), mod, 0.5)
        p = link.plan
        assert p.blocks * p.e == qm * p.channel_uses <= 20_000
        assert p.channel_uses + p.unused_channel_uses == Budget().digital_channel_uses(mod)
        assert p.unused_channel_uses < p.blocks and p.k * p.blocks <= 10_000
        assert p.code.k == p.k and p.code.e == p.e


def test_link_delivers_exact_jpeg_at_high_snr_and_flags_failures_at_low(images):
    link = DigitalLink(Budget(bits=12_000), "16qam", 0.5)
    good = link.transmit(jax.random.key(0), images, 14.0)
    assert good.ok.all() and good.image_failures == 0 and good.block_errors == 0
    _, files = link.source_encode(images)
    for im, f, q in zip(good.images, files, good.quality):
        assert 8 * len(f) <= link.plan.source_bits and q > 0
        np.testing.assert_array_equal(im, jpeg.decode(f, im.shape))  # bit-exact delivery of the file
    bad = link.transmit(jax.random.key(1), images, -2.0)
    assert not bad.ok.any() and bad.image_failures == len(images)
    assert bad.block_errors == bad.block_ok.size and all(im is None for im in bad.images)


def test_rayleigh_link_mixes_outages_and_deliveries(images):
    link = DigitalLink(Budget(bits=12_000), "qpsk", 0.5, channel="rayleigh", equalizer="mmse")
    res = link.transmit(jax.random.key(2), np.concatenate([images] * 4), 6.0)
    assert 0 < res.image_failures < len(res.ok)  # deep fades fail, good ones get through
    assert all((im is None) == (not ok) for im, ok in zip(res.images, res.ok))


def test_nothing_fits_is_a_failure_not_an_image(images):
    link = DigitalLink(Budget(bits=1200), "qpsk", 0.5)  # 600 source bits: below a JPEG's headers
    res = link.transmit(jax.random.key(3), images[:2], 20.0)
    assert (res.quality == 0).all() and res.block_errors == 0 and res.image_failures == 2
    assert res.images == [None, None]
