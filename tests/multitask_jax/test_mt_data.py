"""Multi-task data: VOC palette, the VOC TFDS builder on fake examples, embedded data, DIV2K views."""

import importlib.resources
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from multitask_jax import data as mt_data
from multitask_jax.voc_builder import read_mask

ASSETS = importlib.resources.files("multitask_jax") / "assets" / "voc2012_val_masks"


def _asset(name):
    return ASSETS / name


def test_voc_colormap_matches_the_real_mask_palette():
    """The PNG palette stored in a real VOC SegmentationClass mask is the reference."""
    with Image.open(io.BytesIO(_asset("2007_000033.png").read_bytes())) as img:
        palette = np.asarray(img.getpalette(), np.uint8).reshape(-1, 3)
    cmap = mt_data.voc_colormap()
    np.testing.assert_array_equal(cmap[: len(palette)], palette[:256])
    np.testing.assert_array_equal(cmap[255], [224, 224, 192])
    np.testing.assert_array_equal(cmap[15], [192, 128, 128])  # person


def test_colorize_mask():
    mask = np.array([[0, 1], [15, 255]])
    rgb = mt_data.colorize_mask(mask)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 1], [128, 0, 0])
    np.testing.assert_array_equal(rgb[1, 1], [224, 224, 192])
    with pytest.raises(ValueError, match="255"):
        mt_data.colorize_mask(np.array([[256]]))


IDS = {"train": ["2007_000033", "2007_000042"], "val": ["2007_000061"]}


def _fake_voc(root):
    """A VOCdevkit/VOC2012 tree of 3 examples: vendored real masks + synthetic JPEG photos."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    for split, ids in IDS.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i, image_id in enumerate(ids):
            png = _asset(f"{image_id}.png").read_bytes()
            (voc / "SegmentationClass" / f"{image_id}.png").write_bytes(png)
            mask = read_mask(io.BytesIO(png))
            Image.fromarray(mt_data.synthetic_image(mask, i)).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
    return voc


def test_voc_builder_reads_fake_tar_with_correct_masks(tmp_path):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    voc = _fake_voc(tmp_path / "src")
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "VOCtrainval_11-May-2012.tar", "w") as tar:
        tar.add(tmp_path / "src" / "VOCdevkit", arcname="VOCdevkit")
    data_dir = tmp_path / "tfds"
    builder = mt_data.voc_builder(str(data_dir), str(manual))
    assert builder.info.splits["train"].num_examples == 2
    assert builder.info.splits["validation"].num_examples == 1
    for split, ids in (("train", IDS["train"]), ("validation", IDS["val"])):
        examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
        assert sorted(ex["file_name"].decode() for ex in examples) == sorted(ids)
        for ex in examples:
            image_id = ex["file_name"].decode()
            truth = np.asarray(Image.open(voc / "SegmentationClass" / f"{image_id}.png"))  # palette indices
            np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], truth)
            jpeg = (voc / "JPEGImages" / f"{image_id}.jpg").read_bytes()
            np.testing.assert_array_equal(ex["image"], tf.io.decode_jpeg(jpeg).numpy())  # the file's own bytes
            photo = np.asarray(Image.open(io.BytesIO(jpeg)), np.float64)  # PIL's decoder rounds differently
            assert np.mean(np.abs(ex["image"] - photo)) < 2.0
    # prepared now: found again without any source
    assert mt_data.voc_builder(str(data_dir)).is_prepared()

    # evaluation batches: longer side scaled to S, padded with mask 255
    cfg = dict(source="tfds:voc2012_segmentation", image_size=50, data_dir=str(data_dir))
    batches = list(mt_data.make_segmentation_dataset(cfg, "train", mt_data.Stream(2, process_index=0, process_count=1)))
    assert len(batches) == 1
    b = batches[0]
    assert b["image"].shape == (2, 50, 50, 3) and b["mask"].shape == (2, 50, 50) and b["valid"].all()
    # 2007_000033 is 500 x 366 (W x H) -> 50 x 37 real rows; 2007_000042 is 500 x 335 -> 50 x 34 (round
    # half to even): the other rows are padding, image 0 (-1 after scaling) and mask 255
    pad_rows = [
        int(np.sum(np.all(m == 255, axis=1) & np.all(x == -1.0, axis=(1, 2)))) for m, x in zip(b["mask"], b["image"])
    ]
    assert sorted(pad_rows) == [13, 16]
    assert set(np.unique(b["mask"])) <= set(range(21)) | {255}
    train = mt_data.make_segmentation_dataset(
        cfg, "train", mt_data.Stream(2, shuffle_seed=0, repeat=True, process_index=0, process_count=1)
    )
    tb = next(train)
    assert tb["image"].shape == (2, 50, 50, 3) and tb["mask"].dtype == np.int32
    assert tb["image"].min() >= -1.0 and tb["image"].max() <= 1.0


def test_voc_builder_offline_error_names_options(tmp_path):
    with pytest.raises(mt_data.DatasetUnavailableError, match="manual_dir.*download.*embedded"):
        mt_data.voc_builder(str(tmp_path / "tfds"), manual_dir=str(tmp_path))
    with pytest.raises(mt_data.DatasetUnavailableError, match="embedded"):
        next(
            mt_data.make_segmentation_dataset(
                dict(source="tfds:voc2012_segmentation", image_size=32, data_dir=str(tmp_path)),
                "train",
                mt_data.Stream(1, repeat=True, process_index=0, process_count=1),
            )
        )


def test_div2k_offline_error(tmp_path):
    with pytest.raises(mt_data.DatasetUnavailableError, match="not prepared"):
        mt_data.make_reconstruction_dataset(
            dict(source="tfds:div2k", image_size=(224, 224), data_dir=str(tmp_path)),
            "validation",
            mt_data.Stream(1, process_index=0, process_count=1),
        )


def test_embedded_segmentation_batches():
    images, masks, ids = mt_data.load_embedded_voc(32)
    assert images.shape == (32, 32, 32, 3) and masks.shape == (32, 32, 32) and len(ids) == 32
    assert set(np.unique(masks)) <= set(range(21)) | {255}
    batches = list(
        mt_data.make_segmentation_dataset(
            dict(source="embedded", image_size=32), "validation", mt_data.Stream(5, process_index=0, process_count=1)
        )
    )
    assert len(batches) == 7  # ceil(32 / 5)
    last = batches[-1]
    np.testing.assert_array_equal(last["valid"], [True, True, False, False, False])
    assert np.all(last["mask"][2:] == 255)
    np.testing.assert_array_equal(batches[0]["mask"][1], masks[1])
    np.testing.assert_allclose(batches[0]["image"][1], images[1] / 127.5 - 1.0, atol=1e-6)


def test_synthetic_image_is_learnable_from_the_mask():
    """Every class has one colour in every image: per-class mean colours differ by far more than the noise."""
    mask = read_mask(io.BytesIO(_asset("2007_000129.png").read_bytes()))  # classes 0, 2, 15 and void
    a, b = mt_data.synthetic_image(mask, 0), mt_data.synthetic_image(mask, 1)
    assert a.shape == mask.shape + (3,)
    classes = [c for c in np.unique(mask) if c != 255]
    means = {c: a[mask == c].mean(0) for c in classes}
    for c in classes:
        np.testing.assert_allclose(a[mask == c].mean(0), b[mask == c].mean(0), atol=3.0)  # same colour
    dists = [np.abs(means[c] - means[d]).max() for c in classes for d in classes if c < d]
    assert min(dists) > 20


def test_cover_crop_closed_form():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    out = mt_data.cover_crop(image, (50, 50))  # scale 0.5 -> 50 x 100, centre columns 25..75
    ref = np.asarray(Image.fromarray(image).resize((100, 50), Image.Resampling.BICUBIC))[:, 25:75]
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(mt_data.cover_crop(image, (100, 120)), image[:, 40:160])  # no resize
    assert mt_data.cover_crop(image, (512, 768)).shape == (512, 768, 3)


def test_embedded_reconstruction_batches_at_paper_eval_size():
    it = mt_data.make_reconstruction_dataset(
        dict(source="embedded", image_size=(32, 48)),
        "train",
        mt_data.Stream(4, shuffle_seed=1, repeat=True, process_index=0, process_count=1),
    )
    b = next(it)
    assert b["image"].shape == (4, 32, 48, 3) and b["valid"].all()
    assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
