"""The npz data source (raw images or JPEG bytes + offsets) and exact resume of training streams."""

import io

import numpy as np
import pytest
from PIL import Image

from casc_jax import data as data_lib
from casc_jax import image_io


def _images(n, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _jpeg_archive(path, images, labels):
    blobs = []
    for x in images:
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    np.savez(path, jpeg=np.concatenate(blobs), offsets=offsets, labels=labels)


def _cfg(source, size=8):
    return {"source": source, "image_size": size}


def _all(cfg, split, batch=4, **kw):
    kw = dict(shuffle_seed=None, repeat=False, process_index=0, process_count=1) | kw
    return list(data_lib.make_dataset(cfg, split, data_lib.Stream(batch, **kw)))


def test_images_archive_per_split_in_fixed_order(tmp_path):
    train, test = _images(10, seed=1), _images(6, seed=2)
    np.savez(tmp_path / "train.npz", images=train, labels=np.arange(10))
    np.savez(tmp_path / "test.npz", images=test)
    cfg = _cfg(f"npz:train={tmp_path / 'train.npz'},test={tmp_path / 'test.npz'}")
    assert data_lib.num_examples(cfg, "train") == 10 and data_lib.num_examples(cfg, "test") == 6
    batches = _all(cfg, "train")
    seen = np.concatenate([b["image"][b["valid"]] for b in batches])
    labels = np.concatenate([b["label"][b["valid"]] for b in batches])
    order = np.random.default_rng(image_io.NPZ_ORDER_SEED).permutation(10)
    np.testing.assert_array_equal(labels, order)  # the seeded order mixes a sorted archive
    np.testing.assert_array_equal(image_io.to_uint8(seen), train[order])
    assert sum(int(b["valid"].sum()) for b in _all(cfg, "test")) == 6


def _smooth(n, size=16):
    """Colour gradients (JPEG keeps them closely, unlike noise)."""
    ramp = np.linspace(0, 1, size)
    base = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 0.5 + 0 * ramp[:, None]), -1)
    return np.stack([np.uint8(255 * (0.2 + 0.6 * np.roll(base, i, axis=-1))) for i in range(n)])


def test_jpeg_archive_decodes_like_pillow(tmp_path):
    images = _smooth(5)
    _jpeg_archive(tmp_path / "a.npz", images, np.arange(5))
    decoded, labels = image_io.load_npz(str(tmp_path / "a.npz"))
    order = np.random.default_rng(image_io.NPZ_ORDER_SEED).permutation(5)
    np.testing.assert_array_equal(labels, order)
    for x, i in zip(decoded, order):
        buf = io.BytesIO()
        Image.fromarray(images[i]).save(buf, format="JPEG", quality=95)
        np.testing.assert_array_equal(x, np.asarray(Image.open(buf).convert("RGB")))
    assert np.abs(decoded.astype(float) - images[order]).mean() < 3  # lossy, but the same pictures


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b"not a zip"), "not a readable npz"),
        (lambda p: np.savez(p, other=np.zeros(3)), "neither 'images' nor 'jpeg'"),
        (lambda p: np.savez(p, images=np.zeros((2, 8, 8), np.uint8)), "must be uint8"),
        (lambda p: np.savez(p, jpeg=np.zeros(10, np.uint8), offsets=np.array([0, 5, 3])), "increasing"),
        (lambda p: np.savez(p, jpeg=np.zeros(10, np.uint8), offsets=np.array([0, 10])), "cannot be decoded"),
        (lambda p: np.savez(p, images=_images(3), labels=np.zeros(2)), "2 labels for 3 images"),
    ],
)
def test_bad_archives_get_one_clear_error(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        data_lib.num_examples(_cfg(f"npz:{path}"), "train")


def test_wrong_size_and_missing_split_are_named(tmp_path):
    np.savez(tmp_path / "a.npz", images=_images(4, size=8))
    with pytest.raises(ValueError, match="image_size=8"):
        _all(_cfg(f"npz:{tmp_path / 'a.npz'}", size=32), "train")
    with pytest.raises(ValueError, match="no archive for split 'test'"):
        _all(_cfg(f"npz:train={tmp_path / 'a.npz'}"), "test")
    with pytest.raises(ValueError, match="malformed"):
        data_lib.parse_npz_paths("train=a.npz,test")


def test_training_stream_resumes_exactly_at_any_batch(tmp_path):
    np.savez(tmp_path / "a.npz", images=_images(10))
    cfg = _cfg(f"npz:{tmp_path / 'a.npz'}")
    kw = dict(shuffle_seed=3, repeat=True, process_index=0, process_count=1)
    stream = data_lib.make_dataset(cfg, "train", data_lib.Stream(4, **kw))
    straight = [next(stream)["image"] for _ in range(12)]  # 48 examples: across 4 epochs of 10
    for start in (1, 2, 5, 7):
        resumed = data_lib.make_dataset(cfg, "train", data_lib.Stream(4, start_batch=start, **kw))
        for expected in straight[start:]:
            np.testing.assert_array_equal(next(resumed)["image"], expected)
    epochs = np.concatenate(straight)[:40].reshape(4, 10, -1)  # every epoch is a permutation of all 10
    for e in epochs:
        assert len({x.tobytes() for x in e}) == 10
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
