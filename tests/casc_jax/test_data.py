"""Tests of casc_jax.data: TFDS (mocked), embedded and folder sources, user images for `transmit`."""

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from casc_jax import batching, data, image_io

SHARED_NPZ = pathlib.Path(__file__).resolve().parents[3] / "shared/data/cifar10/cifar10_test_200_lossless.npz"
GREY = 128 / 127.5 - 1


def _cfg(**overrides):
    cfg = data.default_config()
    cfg.update(overrides)
    return cfg


def _ref_float(u8):
    """Float64 reference of the [-1, 1] scaling."""
    return np.asarray(u8, np.float64) / 127.5 - 1.0


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def _rows(images):
    """Hashable rows of uint8 pixels, to compare images as multisets; float input is in [-1, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = image_io.to_uint8(images)  # the exact inverse of the scaling (tested above)
    return [x.tobytes() for x in images]


# ---------------------------------------------------------------------------------------------
# Pixel helpers.


def test_scaling_round_trip_is_exact():
    u8 = np.arange(256, dtype=np.uint8)
    x = image_io.to_float(u8)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, _ref_float(u8), atol=1e-7)
    assert x[0] == -1.0 and x[-1] == 1.0
    np.testing.assert_array_equal(image_io.to_uint8(x), u8)
    np.testing.assert_array_equal(image_io.to_uint8(np.array([-3.0, 3.0])), [0, 255])  # clipped
    with pytest.raises(ValueError, match="NaN"):
        image_io.to_uint8(np.array([np.nan]))


def test_image_grid_layout():
    images = np.stack([np.full((2, 3, 3), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    grid = image_io.image_grid(images, ncols=2, padding=1, pad_value=7)
    expected = np.full((2 * 2 + 3, 2 * 3 + 3, 3), 7, np.uint8)
    expected[1:3, 1:4] = 0
    expected[1:3, 5:8] = 128
    expected[4:6, 1:4] = 255
    np.testing.assert_array_equal(grid, expected)
    assert image_io.image_grid(images, ncols=10, padding=0).shape == (2, 9, 3)  # ncols clamped to N
    with pytest.raises(ValueError):
        image_io.image_grid(images[0], ncols=2)


def test_save_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = image_io.save_png(image_io.to_float(u8), tmp_path / "sub" / "x.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), u8)
    grey = image_io.save_png(image_io.to_float(u8[..., :1]), tmp_path / "g.png")
    np.testing.assert_array_equal(np.asarray(Image.open(grey)), u8[..., 0])
    with pytest.raises(ValueError, match="shape"):
        image_io.save_png(np.zeros((2, 5, 7, 3)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="NaN"):
        image_io.save_png(np.full((2, 2, 3), np.nan), tmp_path / "nan.png")


def test_import_is_cheap():
    root = pathlib.Path(data.__file__).resolve().parents[1]
    code = "import sys, casc_jax.data; print('tensorflow' in sys.modules, 'jax' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_bad_source_and_arguments():
    with pytest.raises(ValueError, match="data.source"):
        data.parse_source("hf:cifar10")
    with pytest.raises(ValueError, match="data.source"):
        data.parse_source("folder:")
    assert data.parse_source("folder:/a:b") == ("folder", "/a:b")
    cfg = _cfg(source="embedded")
    with pytest.raises(ValueError, match="batch_size"):
        data.make_dataset(cfg, "test", data.Stream(0))
    with pytest.raises(ValueError, match="process_index"):
        data.make_dataset(cfg, "test", data.Stream(2, process_index=2, process_count=2))
    with pytest.raises(ValueError, match="splits"):
        data.make_dataset(cfg, "train[:10]", data.Stream(2, process_index=0, process_count=1))


# ---------------------------------------------------------------------------------------------
# Embedded source.


def test_embedded_eval_pass_in_order():
    ref_images, ref_labels = image_io.load_embedded()
    assert ref_images.shape == (200, 32, 32, 3) and ref_images.dtype == np.uint8
    assert ref_labels.dtype == np.int32 and set(ref_labels.tolist()) == set(range(10))
    batches = list(
        data.make_dataset(_cfg(source="embedded"), "test", data.Stream(64, process_index=0, process_count=1))
    )
    assert len(batches) == 4  # ceil(200 / 64)
    image = np.concatenate([b["image"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    label = np.concatenate([b["label"] for b in batches])
    assert image.shape == (256, 32, 32, 3) and image.dtype == np.float32 and label.dtype == np.int32
    np.testing.assert_array_equal(valid, np.arange(256) < 200)
    np.testing.assert_allclose(image[:200], _ref_float(ref_images), atol=1e-6)
    np.testing.assert_array_equal(image[200:], 0.0)
    np.testing.assert_array_equal(label[:200], ref_labels)
    assert data.num_examples(_cfg(source="embedded"), "train") == 200


@pytest.mark.skipif(not SHARED_NPZ.exists(), reason="shared data folder not present")
def test_embedded_matches_shared_file():
    with np.load(SHARED_NPZ) as npz:
        shared_images, shared_labels = npz["images"], npz["labels"]
    batch = next(data.make_dataset(_cfg(source="embedded"), "train", data.Stream(8, process_index=0, process_count=1)))
    np.testing.assert_allclose(batch["image"][0], _ref_float(shared_images[0]), atol=1e-6)
    images, labels = image_io.load_embedded()
    np.testing.assert_array_equal(images, shared_images)
    np.testing.assert_array_equal(labels, shared_labels)


def test_embedded_train_stream_epochs_and_process_blocks():
    images, _ = image_io.load_embedded()

    def stream(p, count, batch):
        return data.make_dataset(
            _cfg(source="embedded"),
            "train",
            data.Stream(batch, shuffle_seed=3, repeat=True, process_index=p, process_count=count),
        )

    single = stream(0, 1, 60)
    batches = [next(single)["image"] for _ in range(7)]  # 420 = 2.1 epochs of the 200 images
    flat = np.concatenate(batches)
    first, second = flat[:200], flat[200:400]
    assert sorted(_rows(first)) == sorted(_rows(images))  # an epoch sees every image once
    assert sorted(_rows(second)) == sorted(_rows(first)) and not np.array_equal(first, second)  # reshuffled
    np.testing.assert_array_equal(next(stream(0, 1, 60))["image"], batches[0])  # the seed fixes the order
    # Two processes take the two halves of the single process's global batches.
    halves = [stream(p, 2, 30) for p in range(2)]
    for expected in batches:
        np.testing.assert_array_equal(np.concatenate([next(h)["image"] for h in halves]), expected)


def test_embedded_resized():
    batch = next(
        data.make_dataset(
            _cfg(source="embedded", image_size=16), "test", data.Stream(5, process_index=0, process_count=1)
        )
    )
    assert batch["image"].shape == (5, 16, 16, 3)
    ref = np.asarray(Image.fromarray(image_io.load_embedded()[0][0]).resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(batch["image"][0], _ref_float(ref), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Folder source.


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # H=30, W=40
    exact = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (50, 20), dtype=np.uint8)
    _save(tmp_path / "a_wide.png", wide)
    _save(tmp_path / "b_exact.bmp", exact)
    _save(tmp_path / "sub" / "c_grey.png", grey, mode="L")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path, dict(wide=wide, exact=exact, grey=grey)


def test_folder_source(image_folder):
    folder, arrays = image_folder
    cfg = _cfg(source=f"folder:{folder}")
    assert data.num_examples(cfg, "train") == 3
    batches = list(data.make_dataset(cfg, "train", data.Stream(2, process_index=0, process_count=1)))
    assert len(batches) == 2
    image = np.concatenate([b["image"] for b in batches])
    assert image.shape == (4, 32, 32, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([b["valid"] for b in batches]), [True, True, True, False])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), 0)
    # Sorted: a_wide.png, b_exact.bmp, sub/c_grey.png. Centre crop of a 30x40 image: columns 5..34.
    crop = Image.fromarray(arrays["wide"]).crop((5, 0, 35, 30)).resize((32, 32), Image.Resampling.BICUBIC)
    np.testing.assert_allclose(image[0], _ref_float(np.asarray(crop)), atol=1e-6)
    np.testing.assert_allclose(image[1], _ref_float(arrays["exact"]), atol=1e-6)
    grey = Image.fromarray(arrays["grey"]).crop((0, 15, 20, 35)).resize((32, 32), Image.Resampling.BICUBIC)
    for c in range(3):
        np.testing.assert_allclose(image[2, ..., c], _ref_float(np.asarray(grey)), atol=1e-6)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        data.make_dataset(
            _cfg(source=f"folder:{tmp_path / 'missing'}"), "train", data.Stream(2, process_index=0, process_count=1)
        )
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        data.make_dataset(
            _cfg(source=f"folder:{tmp_path / 'empty'}"), "train", data.Stream(2, process_index=0, process_count=1)
        )
    bad = tmp_path / "bad"
    _save(bad / "good.png", np.zeros((8, 8, 3), np.uint8))
    (bad / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="broken.png"):
        data.make_dataset(
            _cfg(source=f"folder:{bad}"), "train", data.Stream(2, repeat=True, process_index=0, process_count=1)
        )


def test_truncated_file_named(tmp_path):
    full = _save(tmp_path / "full.png", np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:400])
    with pytest.raises(ValueError, match="cut.png"):
        image_io.load_images_for_transmit([cut], 32)


# ---------------------------------------------------------------------------------------------
# User images for `transmit`.


def test_transmit_pad_and_crop(tmp_path):
    rng = np.random.default_rng(3)
    wide = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)  # H=32, W=64
    path = _save(tmp_path / "wide.png", wide)
    x, sizes = image_io.load_images_for_transmit(str(path), 32, fit="pad")
    assert x.shape == (1, 32, 32, 3) and x.dtype == np.float32 and sizes == [(32, 64)]
    assert image_io.letterbox_box((32, 64), 32) == (8, 0, 16, 32)
    np.testing.assert_allclose(x[0, :8], GREY, atol=1e-6)
    np.testing.assert_allclose(x[0, 24:], GREY, atol=1e-6)
    content = Image.fromarray(wide).resize((32, 16), Image.Resampling.BICUBIC)
    np.testing.assert_allclose(x[0, 8:24], _ref_float(np.asarray(content)), atol=1e-6)

    x, _ = image_io.load_images_for_transmit([path], 32, fit="crop")
    np.testing.assert_allclose(x[0], _ref_float(wide[:, 16:48]), atol=1e-6)  # centre square, no resize
    assert image_io.restore_size(x[0], (32, 64), fit="crop").shape == (32, 32, 3)


def test_transmit_restore_size_round_trip(tmp_path):
    yy, xx = np.mgrid[0:48, 0:96]
    smooth = np.stack([xx * 255 / 95, yy * 255 / 47, np.full_like(xx, 100.0)], -1)
    smooth = np.rint(smooth).astype(np.uint8)
    x, sizes = image_io.load_images_for_transmit([_save(tmp_path / "s.png", smooth)], 32, fit="pad")
    back = image_io.restore_size(x[0], sizes[0], fit="pad")
    assert back.shape == (48, 96, 3)
    assert np.abs(back - _ref_float(smooth)).mean() < 0.03  # smooth content survives 3x down/up


def test_transmit_modes(tmp_path):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:8, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent -> white
    sixteen = np.full((16, 16), 257 * 100, np.uint16)
    sixteen[0, 0] = 65535
    paths = [
        _save(tmp_path / "grey.png", grey, mode="L"),
        _save(tmp_path / "rgba.png", rgba, mode="RGBA"),
        _save(tmp_path / "sixteen.png", sixteen),
    ]
    x, sizes = image_io.load_images_for_transmit(paths, 16)
    assert x.shape == (3, 16, 16, 3) and sizes == [(16, 16)] * 3
    for c in range(3):
        np.testing.assert_allclose(x[0, ..., c], _ref_float(grey), atol=1e-6)
    np.testing.assert_allclose(x[1, :8], np.broadcast_to(_ref_float([200, 0, 0]), (8, 16, 3)), atol=1e-6)
    np.testing.assert_allclose(x[1, 8:], 1.0)
    np.testing.assert_allclose(x[2, 0, 0], 1.0)
    np.testing.assert_allclose(x[2, 1:], _ref_float(100), atol=1e-6)


def test_transmit_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        image_io.load_images_for_transmit([tmp_path / "nope.png"], 32)
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="junk.jpg"):
        image_io.load_images_for_transmit([tmp_path / "junk.jpg"], 32)
    with pytest.raises(ValueError, match="folder"):
        image_io.load_images_for_transmit([tmp_path], 32)
    with pytest.raises(ValueError, match="no image"):
        image_io.load_images_for_transmit([], 32)
    ok = _save(tmp_path / "ok.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="fit"):
        image_io.load_images_for_transmit([ok], 32, fit="stretch")
    with pytest.raises(ValueError, match="image_size"):
        image_io.load_images_for_transmit([ok], 0)


# ---------------------------------------------------------------------------------------------
# TFDS source (mocked; nothing touches the network).

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    """A data_dir holding cifar10's metadata, so the builder counts as prepared under mock_data."""
    root = tmp_path_factory.mktemp("tfds")
    builder = tfds.builder("cifar10", data_dir=str(root))
    pathlib.Path(builder.data_path).mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)
    return str(root)


def _mock_examples(prepared_dir, n):
    """Reference examples of the mocked split, straight from TFDS: uint8 images and labels."""
    ds = tfds.builder("cifar10", data_dir=prepared_dir).as_dataset(split="test", shuffle_files=False)
    examples = list(tfds.as_numpy(ds))
    assert len(examples) == n
    return np.stack([e["image"] for e in examples]), np.array([e["label"] for e in examples])


def test_tfds_eval_each_example_once_over_two_processes(prepared_dir):
    n, bs = 11, 4
    cfg = _cfg(source="tfds:cifar10", data_dir=prepared_dir)
    with tfds.testing.mock_data(num_examples=n, data_dir=prepared_dir):
        ref_images, ref_labels = _mock_examples(prepared_dir, n)
        single = list(data.make_dataset(cfg, "test", data.Stream(bs, process_index=0, process_count=1)))
        shards = [
            list(data.make_dataset(cfg, "test", data.Stream(bs, process_index=p, process_count=2))) for p in range(2)
        ]
        assert data.num_examples(cfg, "test") == n
    # One process: ceil(11 / 4) = 3 batches, in file order, the last padded.
    assert len(single) == 3
    image = np.concatenate([b["image"] for b in single])
    valid = np.concatenate([b["valid"] for b in single])
    assert image.shape == (12, 32, 32, 3) and image.dtype == np.float32
    assert image.min() >= -1.0 and image.max() <= 1.0
    np.testing.assert_array_equal(valid, np.arange(12) < n)
    np.testing.assert_allclose(image[:n], _ref_float(ref_images), atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in single])[:n], ref_labels)
    np.testing.assert_array_equal(image[n:], 0.0)
    # Two processes: the same number of batches, ceil(ceil(11 / 2) / 4) = 2, disjoint shards of 6 and 5
    # whose valid rows cover every example exactly once.
    assert [len(s) for s in shards] == [2, 2]
    kept = []
    for p, shard in enumerate(shards):
        valid = np.concatenate([b["valid"] for b in shard])
        assert valid.sum() == len(range(p, n, 2))
        kept.append(np.concatenate([b["image"] for b in shard])[valid])
    assert not set(_rows(kept[0])) & set(_rows(kept[1]))
    assert sorted(_rows(np.concatenate(kept))) == sorted(_rows(ref_images))


def test_tfds_train_stream(prepared_dir):
    n, bs = 11, 4
    cfg = _cfg(source="tfds:cifar10", data_dir=prepared_dir)
    with tfds.testing.mock_data(num_examples=n, data_dir=prepared_dir):
        ref_images, _ = _mock_examples(prepared_dir, n)
        it = data.make_dataset(
            cfg, "train", data.Stream(bs, shuffle_seed=0, repeat=True, process_index=0, process_count=1)
        )
        batches = [next(it) for _ in range(6)]  # 24 examples: more than two epochs
        again = data.make_dataset(
            cfg, "train", data.Stream(bs, shuffle_seed=0, repeat=True, process_index=0, process_count=1)
        )
        repeat_first = next(again)
    for b in batches:
        assert b["image"].shape == (bs, 32, 32, 3) and b["image"].dtype == np.float32
        assert b["label"].shape == (bs,) and b["label"].dtype == np.int32
        assert b["valid"].all()
        assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
        assert ((b["label"] >= 0) & (b["label"] < 10)).all()
    stream = np.concatenate([b["image"] for b in batches])
    assert sorted(_rows(stream[:n])) == sorted(_rows(ref_images))  # first epoch: a permutation
    assert _rows(stream[:n]) != _rows(ref_images)  # shuffled: not in file order
    assert sorted(_rows(stream[n : 2 * n])) == sorted(_rows(ref_images))  # second epoch
    assert _rows(stream[n : 2 * n]) != _rows(stream[:n])  # reshuffled every epoch
    np.testing.assert_array_equal(repeat_first["image"], batches[0]["image"])  # the seed fixes the order


def test_tfds_resize(prepared_dir):
    cfg = _cfg(source="tfds:cifar10", data_dir=prepared_dir, image_size=16)
    with tfds.testing.mock_data(num_examples=3, data_dir=prepared_dir):
        ref_images, _ = _mock_examples(prepared_dir, 3)
        batch = next(data.make_dataset(cfg, "test", data.Stream(3, process_index=0, process_count=1)))
    assert batch["image"].shape == (3, 16, 16, 3)
    # Antialiased 2x downscaling keeps each image's mean colour.
    np.testing.assert_allclose(batch["image"].mean(axis=(1, 2)), _ref_float(ref_images).mean(axis=(1, 2)), atol=0.02)


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


class FakeClock:
    """Stands in for `time.sleep`: waiting advances `now` without taking wall time."""

    def __init__(self):
        self.now = 0.0

    def sleep(self, seconds):
        self.now += seconds


def test_tfds_not_prepared_fails_fast_offline(tmp_path, no_network, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(time, "sleep", clock.sleep)  # a retry or back-off loop would advance the fake clock
    cfg = _cfg(source="tfds:cifar10", data_dir=str(tmp_path / "empty_tfds"))
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.make_dataset(cfg, "train", data.Stream(4, shuffle_seed=0, repeat=True, process_index=0, process_count=1))
    message = str(info.value)
    assert "--config.data.source=embedded" in message
    assert "--config.data.source=folder:" in message
    assert "--config.data.download=True" in message
    assert clock.now == 0.0, f"waited {clock.now} s before failing"
    assert no_network == []
    assert isinstance(info.value, RuntimeError)


def test_tfds_download_failure_is_unavailable(tmp_path, monkeypatch, no_network):
    def fail(self, *args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    cfg = _cfg(source="tfds:cifar10", data_dir=str(tmp_path), download=True)
    with pytest.raises(data.DatasetUnavailableError, match="no route to host") as info:
        data.make_dataset(cfg, "test", data.Stream(4, process_index=0, process_count=1))
    assert "embedded" in str(info.value) and "folder:" in str(info.value)
    assert no_network == []


def test_tfds_unknown_name(tmp_path, no_network):
    cfg = _cfg(source="tfds:no_such_dataset_xyz", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no_such_dataset_xyz"):
        data.make_dataset(cfg, "test", data.Stream(4, process_index=0, process_count=1))


def test_a_training_stream_needs_an_example_for_every_process():
    images, labels = np.zeros((3, 4, 4, 3), np.uint8), np.zeros(3, np.int32)
    for p in range(4):  # every process refuses, not only those left without a shard
        with pytest.raises(ValueError, match="3 examples cannot give every one of 4 processes a shard"):
            stream = batching.Stream(1, shuffle_seed=0, repeat=True, process_index=p, process_count=4)
            next(batching.array_batches(images, labels, stream))
    one_pass = batching.array_batches(images, labels, batching.Stream(1, process_index=3, process_count=4))
    assert not any(b["valid"].any() for b in one_pass)  # evaluation: process 3 only pads
