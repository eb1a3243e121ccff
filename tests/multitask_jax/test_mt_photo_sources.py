"""The CamVid (camvid:DIR) and natural-photo (photos:PATH) sources on generated files in tmp_path."""

import io

import numpy as np
import pytest
from PIL import Image

from casc_jax.batching import Stream
from multitask_jax import data as mt_data

IGNORE = mt_data.VOC_IGNORE_INDEX
H0, W0 = 24, 32  # the fake CamVid frames (the real ones are 360 x 480)


def _jpeg(rng, h, w, fmt="JPEG"):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _write_encoded(path, blobs, **arrays):
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    np.savez(path, jpeg=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets, **arrays)


def _fake_camvid(root, sizes=None):
    """camvid_{train,val,test}.npz with random JPEG frames and labels in 0..11 (11 void)."""
    sizes = sizes or {"train": 5, "val": 3, "test": 2}
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in sizes.items():
        labels = rng.integers(0, 12, (n, H0, W0)).astype(np.uint8)
        names = np.array([f"{split}_{i}.png" for i in range(n)])
        _write_encoded(root / f"camvid_{split}.npz", [_jpeg(rng, H0, W0) for _ in range(n)], labels=labels,
                       names=names)
    return root


def _seg(root, split, stream, size=16, extra=""):
    return mt_data.make_segmentation_dataset(dict(source=f"camvid:{root}{extra}", image_size=size), split, stream)


def _train(batch, seed=7, start=0, index=0, count=1):
    return Stream(batch, seed, True, index, count, start)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# -- CamVid ----------------------------------------------------------------------------------------------


def test_camvid_void_is_the_ignore_label(tmp_path):
    root = _fake_camvid(tmp_path / "camvid")
    images, masks, names = mt_data.load_camvid(str(root), "train")
    with np.load(root / "camvid_train.npz") as npz:
        labels = npz["labels"]
    assert len(images) == 5 and images[0].shape == (H0, W0, 3) and images[0].dtype == np.uint8
    assert names[0] == "train_0.png"
    masks = np.stack(masks)
    np.testing.assert_array_equal(masks == IGNORE, labels == mt_data.CAMVID_VOID)
    np.testing.assert_array_equal(masks[labels != 11], labels[labels != 11])
    assert mt_data.CAMVID_NUM_CLASSES == 11 == len(mt_data.CAMVID_CLASSES) == len(mt_data.CAMVID_PALETTE)
    assert mt_data.segmentation_palette(f"camvid:{root}")[IGNORE].tolist() == [0, 0, 0]
    rgb = mt_data.colorize_mask(masks[:1], mt_data.camvid_colormap())
    assert rgb.shape == (1, H0, W0, 3)
    np.testing.assert_array_equal(rgb[0][masks[0] == 3], np.broadcast_to([128, 64, 128], rgb[0][masks[0] == 3].shape))


def test_camvid_training_batches(tmp_path):
    root = _fake_camvid(tmp_path / "camvid")
    b = next(_seg(root, "train", _train(4)))
    assert b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == np.float32
    assert b["mask"].shape == (4, 16, 16) and b["mask"].dtype == np.int32
    assert b["valid"].all() and b["image"].min() >= -1.0 and b["image"].max() <= 1.0
    assert set(np.unique(b["mask"])) <= set(range(11)) | {IGNORE}
    assert mt_data.num_examples(dict(source=f"camvid:{root}"), "train") == 5


def test_camvid_eval_is_one_deterministic_pass_cropped_by_default_or_padded(tmp_path):
    root = _fake_camvid(tmp_path / "camvid")
    one = list(_seg(root, "validation", Stream(2, process_index=0, process_count=1), extra=",eval=pad"))
    two = list(_seg(root, "val", Stream(2, process_index=0, process_count=1), extra=",eval=pad"))
    assert len(one) == 2 and [b["valid"].tolist() for b in one] == [[True, True], [True, False]]
    for a, b in zip(one, two, strict=True):
        _same(a, b)
    # 24 x 32 -> longer side 16: 12 x 16 of content, then rows 12..15 padded (image 0, mask ignored).
    first = one[0]
    assert (first["mask"][:, 12:] == IGNORE).all() and (first["image"][:, 12:] == -1.0).all()
    _, masks, _ = mt_data.load_camvid(str(root), "val")
    assert (first["mask"][0, :12] != IGNORE).sum() == (mt_data._scaled_pair(np.zeros((H0, W0, 3), np.uint8), masks[0],
                                                                              16, cover=False)[1] != IGNORE).sum()
    assert (one[1]["mask"][1] == IGNORE).all()  # the padding example
    crop = next(_seg(root, "val", Stream(3, process_index=0, process_count=1)))
    _same(crop, next(_seg(root, "val", Stream(3, process_index=0, process_count=1), extra=",eval=crop")))
    assert crop["image"].shape == (3, 16, 16, 3) and (crop["image"][:, 12:] != -1.0).any()
    # 24 x 32 -> shorter side 16: 16 x 22 (rounded up) at the training scale, the centre 16 columns (3..18).
    image, mask = mt_data._scaled_pair(np.zeros((H0, W0, 3), np.uint8), masks[0], 16, cover=True)
    assert mask.shape == (16, 22)
    np.testing.assert_array_equal(crop["mask"][0], mask[:, 3:19])


def test_camvid_crops_change_across_epochs_and_resume_exactly(tmp_path):
    root = _fake_camvid(tmp_path / "camvid")
    # No shuffle and a batch of the whole set: batch k is epoch k, the same frames in the same order.
    epochs = _take(_seg(root, "train", Stream(5, None, True, 0, 1)), 3)
    assert not np.array_equal(epochs[0]["image"], epochs[1]["image"])
    assert not np.array_equal(epochs[1]["mask"], epochs[2]["mask"])
    whole = _take(_seg(root, "train", _train(2)), 6)
    for a, b in zip(whole, _take(_seg(root, "train", _train(2)), 6), strict=True):
        _same(a, b)  # deterministic
    for a, b in zip(whole[4:], _take(_seg(root, "train", _train(2, start=4)), 2), strict=True):
        _same(a, b)  # restarted at batch 4
    halves = [_take(_seg(root, "train", _train(1, index=i, count=2)), 6) for i in (0, 1)]
    for k in range(6):  # two processes see what one does
        np.testing.assert_array_equal(np.concatenate([halves[0][k]["mask"], halves[1][k]["mask"]]), whole[k]["mask"])


def test_camvid_errors_are_one_line(tmp_path):
    def message(exc_info):
        text = str(exc_info.value)
        assert "\n" not in text
        return text

    with pytest.raises(FileNotFoundError) as e:
        _seg(tmp_path / "nowhere", "train", _train(2))
    assert "CamVid folder not found" in message(e) and "nowhere" in message(e)
    root = _fake_camvid(tmp_path / "partial", {"train": 2})
    with pytest.raises(FileNotFoundError) as e:
        _seg(root, "validation", Stream(2, process_index=0, process_count=1))
    assert "camvid_val.npz" in message(e)
    with pytest.raises(ValueError, match="splits"):
        _seg(root, "trainval", _train(2))
    bad = tmp_path / "garbage"
    bad.mkdir()
    (bad / "camvid_train.npz").write_bytes(b"PK\x03\x04 this is not an archive")
    with pytest.raises(ValueError) as e:
        _seg(bad, "train", _train(2))
    assert "not a readable npz archive" in message(e)
    broken = tmp_path / "broken"
    broken.mkdir()
    rng = np.random.default_rng(1)
    blobs = [_jpeg(rng, H0, W0), b"\xff\xd8 not a jpeg at all", _jpeg(rng, H0, W0)]
    _write_encoded(broken / "camvid_train.npz", blobs, labels=np.zeros((3, H0, W0), np.uint8))
    with pytest.raises(ValueError) as e:
        _seg(broken, "train", _train(2))
    assert "encoded image 1 cannot be decoded" in message(e) and "camvid_train.npz" in message(e)
    wrong = tmp_path / "wrong_labels"
    wrong.mkdir()
    _write_encoded(wrong / "camvid_train.npz", [_jpeg(rng, H0, W0)], labels=np.full((1, H0, W0), 12, np.uint8))
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.11"):
        _seg(wrong, "train", _train(1))
    with pytest.raises(ValueError, match="bad option"):
        _seg(root, "train", _train(1), extra=",holdout=0.5")


# -- natural photos ----------------------------------------------------------------------------------------


def _fake_photos(root):
    """Sub-folders: EvalA (2 PNG), TrainB (2 JPEG, one smaller than the crop), TrainC/deeper (1 PNG)."""
    rng = np.random.default_rng(2)
    files = {"EvalA/a0.png": (40, 50), "EvalA/a1.png": (30, 30), "TrainB/b0.jpg": (36, 48),
             "TrainB/b1.jpeg": (10, 12), "TrainC/deeper/c0.png": (64, 40)}
    for name, (h, w) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(rng, h, w, "PNG" if name.endswith(".png") else "JPEG"))
    (root / "TrainB" / "notes.txt").write_text("not an image")
    return root


def _recon(source, split, stream, size=(16, 24)):
    return mt_data.make_reconstruction_dataset(dict(source=source, image_size=size), split, stream)


def test_photo_split_rules(tmp_path):
    root = _fake_photos(tmp_path / "photos")
    names, images = mt_data.load_photos(str(root))
    assert names == ("EvalA/a0.png", "EvalA/a1.png", "TrainB/b0.jpg", "TrainB/b1.jpeg", "TrainC/deeper/c0.png")
    assert images[3].shape == (10, 12, 3) and images[3].dtype == np.uint8
    train, held = mt_data.photo_split(names, {"eval": "EvalA"})
    assert held.tolist() == [0, 1] and train.tolist() == [2, 3, 4]
    train, held = mt_data.photo_split(names, {"eval": "EvalA+TrainC"})
    assert held.tolist() == [0, 1, 4]
    a = mt_data.photo_split(names, {"holdout": "0.4", "seed": "5"})
    b = mt_data.photo_split(names, {"holdout": "0.4", "seed": "5"})
    assert a[1].tolist() == b[1].tolist() and len(a[1]) == 2 and len(a[0]) == 3
    assert sorted(a[0].tolist() + a[1].tolist()) == list(range(5))
    with pytest.raises(ValueError, match="no photos to evaluate"):  # the default folders are not there
        mt_data.photo_split(names, {})
    with pytest.raises(ValueError, match="fraction"):
        mt_data.photo_split(names, {"holdout": "1.5"})
    with pytest.raises(ValueError, match="not both"):
        mt_data.parse_mt_source(f"photos:{root},eval=EvalA,holdout=0.5")
    assert mt_data.parse_mt_source(f"photos:{root},eval=EvalA") == ("photos", str(root), {"eval": "EvalA"})
    assert mt_data.parse_mt_source("tfds:div2k") == ("tfds", "div2k", {})


def test_photo_batches_train_and_eval(tmp_path):
    root = _fake_photos(tmp_path / "photos")
    source = f"photos:{root},eval=EvalA"
    b = next(_recon(source, "train", _train(4)))
    assert b.keys() == {"image", "valid"} and b["image"].shape == (4, 16, 24, 3) and b["image"].dtype == np.float32
    assert b["valid"].all() and b["image"].min() >= -1.0 and b["image"].max() <= 1.0
    passes = [list(_recon(source, "validation", Stream(3, process_index=0, process_count=1))) for _ in range(2)]
    assert len(passes[0]) == 1 and passes[0][0]["valid"].tolist() == [True, True, False]
    _same(passes[0][0], passes[1][0])
    _, images = mt_data.load_photos(str(root))
    expected = mt_data.image_io.to_float(mt_data.cover_crop(images[0], (16, 24)))
    np.testing.assert_array_equal(passes[0][0]["image"][0], expected)
    assert (passes[0][0]["image"][2] == 0).all()  # padding
    assert mt_data.num_examples(dict(source=source), "train") == 3
    assert mt_data.num_examples(dict(source=source), "test") == 2


def test_photo_crops_change_across_epochs_and_resume_exactly(tmp_path):
    root = _fake_photos(tmp_path / "photos")
    source = f"photos:{root},eval=EvalA"
    epochs = _take(_recon(source, "train", Stream(3, None, True, 0, 1)), 3)
    assert not np.array_equal(epochs[0]["image"], epochs[1]["image"])
    whole = _take(_recon(source, "train", _train(2, seed=3)), 5)
    for a, b in zip(whole[2:], _take(_recon(source, "train", _train(2, seed=3, start=2)), 3), strict=True):
        _same(a, b)


def test_photo_npz_and_camvid_extra(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "photos.npz"
    _write_encoded(path, [_jpeg(rng, 20 + 4 * i, 30, "PNG") for i in range(4)],
                   names=np.array(["X/0.png", "X/1.png", "Y/2.png", "Y/3.png"]))
    source = f"photos:{path},eval=X"
    assert mt_data.num_examples(dict(source=source), "train") == 2
    assert next(_recon(source, "train", _train(2)))["image"].shape == (2, 16, 24, 3)
    camvid = _fake_camvid(tmp_path / "camvid")
    with_camvid = f"{source},camvid={camvid}"
    assert mt_data.num_examples(dict(source=with_camvid), "train") == 2 + 5
    assert mt_data.num_examples(dict(source=with_camvid), "validation") == 2
    assert next(_recon(with_camvid, "train", _train(7)))["image"].shape == (7, 16, 24, 3)
    held = mt_data.num_examples(dict(source=f"photos:{path},holdout=0.25"), "validation")
    assert held == 1


def test_photo_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        _recon(f"photos:{tmp_path / 'missing'}", "train", _train(2))
    assert "image folder not found" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="npz archive not found"):
        _recon(f"photos:{tmp_path / 'missing.npz'}", "train", _train(2))
    root = _fake_photos(tmp_path / "photos")
    (root / "TrainB" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError) as e:
        _recon(f"photos:{root},eval=EvalA", "train", _train(2))
    assert "corrupt.png" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="splits"):
        _recon(f"photos:{tmp_path / 'photos'},eval=EvalA", "trainval", _train(2))


def test_training_counts_and_reads_the_new_sources(tmp_path):
    from configs import multitask_base
    from multitask_jax import train as mt_train

    camvid = _fake_camvid(tmp_path / "camvid")
    seg = multitask_base.base_config("segmentation", "smoke")
    seg.data.source = f"camvid:{camvid}"
    assert mt_train.num_examples(seg, "segmentation", "train") == 5
    b = next(mt_train.make_batches(seg, "segmentation", "train", _train(2)))
    assert b["mask"].shape[1:] == b["image"].shape[1:3] == mt_train.image_hw(seg)
    recon = multitask_base.base_config("reconstruction", "smoke")
    recon.data.source = f"photos:{_fake_photos(tmp_path / 'photos')},eval=EvalA"
    assert mt_train.num_examples(recon, "reconstruction", "train") == 3
    b = next(mt_train.make_batches(recon, "reconstruction", "validation", Stream(2, process_index=0, process_count=1)))
    assert b["image"].shape[1:3] == mt_train.image_hw(recon)
