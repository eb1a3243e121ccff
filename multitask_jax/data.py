"""Data of the multi-task system: DIV2K (reconstruction) and PASCAL VOC 2012 segmentation.

Batches are numpy dicts, as in casc_jax.data:

    reconstruction: dict(image=(B, H, W, 3) float32 in [-1, 1], valid=(B,) bool)
    segmentation:   dict(image=(B, S, S, 3) float32 in [-1, 1], mask=(B, S, S) int32 in 0..20 or 255,
                         valid=(B,) bool)

Sources (`cfg.source` of the `data` config section):
- reconstruction: 'tfds:div2k' (TFDS `div2k/bicubic_x2`, its 'hr' images; 800 train, 100 validation),
  'folder:PATH', or 'embedded' (the synthetic VOC-mask images below). Training takes random (H, W) crops
  with horizontal flips; evaluation resizes each image (aspect kept, antialiased bicubic) to cover (H, W)
  and takes the centre crop: (224, 224) and (512, 768) (the paper's 224x224 and 768x512, W x H) cases.
- segmentation: 'tfds:voc2012_segmentation' (the project's builder, multitask_jax/voc_builder.py, fed
  from `cfg.manual_dir` or downloaded when `cfg.download`), or 'embedded'. Training resizes the shorter side
  to S (image bilinear, mask nearest), takes a random S x S crop and flips; evaluation scales the longer
  side to S and pads to S x S with image 0 and mask 255, so every real pixel is scored exactly once.
- 'embedded' (offline smoke runs): 32 real VOC 2012 val masks shipped in multitask_jax/assets, each paired
  with a synthetic image drawn from the mask (a fixed colour and texture per class plus noise), so the
  segmentation task is learnable offline. The photos are not shipped. Not an experiment.

TensorFlow is imported only on the TFDS paths.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from casc_jax.batching import Batch, Stream, array_batches, num_eval_batches
from casc_jax.data import DatasetUnavailableError, cfg_get, import_tf, parse_source, tfds_builder
from casc_jax.image_io import load_image_folder
from casc_jax.metrics.segmentation import VOC_IGNORE_INDEX

VOC_BUILDER_NAME = "voc2012_segmentation"
DIV2K_NAME = "div2k/bicubic_x2"
EVAL_SIZES = ((224, 224), (512, 768))  # (H, W): the paper's 224x224 and 768x512 validation images
EMBEDDED_MASK_DIR = "voc2012_val_masks"



# ----------------------------------------------------------------------------------------------
# VOC palette.


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC palette (n, 3) uint8: class c gets the bits of c spread over the RGB high bits
    (0 black, 1 (128, 0, 0), ..., 255 = void (224, 224, 192))."""
    cmap = np.zeros((n, 3), np.uint8)
    for c in range(n):
        r = g = b = 0
        v = c
        for j in range(8):
            r |= ((v >> 0) & 1) << (7 - j)
            g |= ((v >> 1) & 1) << (7 - j)
            b |= ((v >> 2) & 1) << (7 - j)
            v >>= 3
        cmap[c] = (r, g, b)
    return cmap


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """Class indices (..., H, W) in 0..255 -> uint8 RGB (..., H, W, 3) in the VOC palette."""
    mask = np.asarray(mask)
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask values must be in [0, 255], got [{mask.min()}, {mask.max()}]")
    return voc_colormap()[mask.astype(np.int64)]


# ----------------------------------------------------------------------------------------------
# Embedded offline data: real VOC val masks + synthetic images.


@functools.cache
def _embedded_masks() -> tuple[tuple[str, np.ndarray], ...]:
    from multitask_jax.voc_builder import read_mask

    folder = importlib.resources.files("multitask_jax") / "assets" / EMBEDDED_MASK_DIR
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".png")), key=lambda f: f.name)
    if not files:
        raise FileNotFoundError(f"no embedded VOC masks under {folder}; the package assets are missing")
    return tuple((f.name[:-4], read_mask(io.BytesIO(f.read_bytes()))) for f in files)


def synthetic_image(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """A learnable stand-in photo for a VOC mask (H, W): uint8 (H, W, 3).

    Class c gets a fixed colour (drawn from a generator seeded by c, so it is the same in every image)
    and a fixed stripe texture; void pixels are mid grey. Per-image Gaussian noise (std 12) from `seed`.
    """
    mask = np.asarray(mask)
    h, w = mask.shape
    colours = np.stack([np.random.default_rng(1000 + c).integers(30, 226, 3) for c in range(256)])
    colours[VOC_IGNORE_INDEX] = 128
    rows, cols = np.mgrid[0:h, 0:w]
    freq = 0.15 + 0.02 * (mask % 7)
    texture = 20.0 * np.sin(freq * (rows + (mask % 3) * cols))
    image = colours[mask].astype(np.float64) + texture[..., None]
    image += np.random.default_rng(seed).normal(0.0, 12.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _resize_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    h, w = size
    img = Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR)
    msk = Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(img), np.asarray(msk)


def load_embedded_voc(image_size: int = 64) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The embedded set at S x S: images uint8 (N, S, S, 3), masks uint8 (N, S, S), VOC ids (N)."""
    size = int(image_size)
    if size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    images, masks, ids = [], [], []
    for i, (image_id, mask) in enumerate(_embedded_masks()):
        img, msk = _resize_pair(synthetic_image(mask, seed=i), mask, (size, size))
        images.append(img)
        masks.append(msk)
        ids.append(image_id)
    return np.stack(images), np.stack(masks), ids


# ----------------------------------------------------------------------------------------------
# VOC through the project's TFDS builder.


def _voc_offline_options() -> str:
    from multitask_jax.voc_builder import VOC_TAR, VOC_URL

    return (
        "Options: put VOCtrainval_11-May-2012.tar (or its extracted VOCdevkit folder) in a folder and set "
        f"--config.data.manual_dir to it ({VOC_TAR} from {VOC_URL}); or set --config.data.download=True to "
        "download it (about 2 GB); or use --config.data.source=embedded (32 real VOC masks with synthetic "
        "images shipped with multitask_jax, offline smoke runs only)."
    )


def voc_builder(data_dir: str | None = None, manual_dir: str | None = None, download: bool = False):
    """The prepared `voc2012_segmentation` builder, preparing it from `manual_dir` or (if `download`) the
    official URL first. Raises DatasetUnavailableError when neither is possible."""
    import tensorflow_datasets as tfds

    from multitask_jax.voc_builder import Voc2012Segmentation, find_voc_root

    builder = Voc2012Segmentation(data_dir=data_dir)
    if builder.is_prepared():
        return builder
    has_manual = manual_dir is not None and (
        find_voc_root(manual_dir) is not None or (tfds.core.Path(manual_dir) / "VOCtrainval_11-May-2012.tar").exists()
    )
    if not has_manual and not download:
        where = f"manual_dir={manual_dir}" if manual_dir else "no data.manual_dir"
        raise DatasetUnavailableError(
            f"PASCAL VOC 2012 segmentation is not prepared in {builder.data_dir} ({where}; data.download is "
            "False). " + _voc_offline_options()
        )
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as exc:  # network, disk or a malformed archive: the data is unavailable
        raise DatasetUnavailableError(
            f"preparing PASCAL VOC 2012 segmentation failed: {type(exc).__name__}: {exc}. " + _voc_offline_options()
        ) from exc
    return builder


def _resized_pair(ex, size: int, tf, cover: bool):
    """(image, mask) of a VOC example resized (bilinear / nearest) so that its shorter side (`cover`)
    or its longer side is `size`."""
    image, mask = ex["image"], ex["segmentation_mask"]
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    if cover:
        new = tf.cast(tf.math.ceil(shape * (size / tf.reduce_min(shape))), tf.int32)
    else:
        new = tf.maximum(tf.cast(tf.round(shape * (size / tf.reduce_max(shape))), tf.int32), 1)
    return tf.image.resize(image, new, "bilinear"), tf.image.resize(mask, new, "nearest")


def _seg_train_map(size: int, tf):
    def fn(ex):
        image, mask = _resized_pair(ex, size, tf, cover=True)
        both = tf.concat([image, tf.cast(mask, tf.float32)], axis=-1)
        both = tf.image.random_crop(both, (size, size, 4))
        both = tf.image.random_flip_left_right(both)
        return both[..., :3], tf.cast(both[..., 3], tf.int32)

    return fn


def _seg_eval_map(size: int, tf):
    def fn(ex):
        image, mask = _resized_pair(ex, size, tf, cover=False)
        image = tf.image.pad_to_bounding_box(image, 0, 0, size, size)
        mask = tf.image.pad_to_bounding_box(tf.cast(mask, tf.int32) - VOC_IGNORE_INDEX, 0, 0, size, size)
        return image, (mask + VOC_IGNORE_INDEX)[..., 0]

    return fn


def _tf_batches(ds, n: int, stream: Stream, *, example_fn, blank, tf):
    """Shard, (shuffle, repeat), map to (image uint8-range float, target), scale, pad, batch."""
    import tensorflow_datasets as tfds

    n_local = stream.check_shards(n)
    autotune = tf.data.AUTOTUNE
    ds = ds.shard(stream.process_count, stream.process_index)
    if stream.shuffle_seed is not None:
        ds = ds.shuffle(max(1, min(n_local, 10_000)), seed=stream.shuffle_seed, reshuffle_each_iteration=True)
    if stream.repeat:
        ds = ds.repeat()
    ds = ds.map(example_fn, num_parallel_calls=autotune)
    scale = lambda ex: dict(ex, image=ex["image"] / 127.5 - 1.0, valid=tf.constant(True))
    ds = ds.map(scale, num_parallel_calls=autotune)
    if not stream.repeat:
        pad = num_eval_batches(n, stream.batch_size, stream.process_count) * stream.batch_size - n_local
        ds = ds.concatenate(tf.data.Dataset.from_tensors(dict(blank, valid=tf.constant(False))).repeat(pad))
    return iter(tfds.as_numpy(ds.batch(stream.batch_size, drop_remainder=True).prefetch(autotune)))


def make_segmentation_dataset(cfg: Any, split: str, stream: Stream) -> Iterator[Batch]:
    """VOC batches dict(image, mask, valid) of `split` ('train' or 'validation'); see the module docstring.

    cfg: `source` ('tfds:voc2012_segmentation' or 'embedded'), `image_size` S, `data_dir`, `manual_dir`,
    `download`. Training augmentation is used when `stream.repeat` is True.
    """
    stream = stream.resolved()
    size = int(cfg_get(cfg, "image_size", 64))
    kind, arg = parse_source(cfg_get(cfg, "source"))
    if kind == "embedded":
        images, masks, _ = load_embedded_voc(size)
        batches = array_batches(images, np.arange(len(images), dtype=np.int32), stream)
        def with_mask(b: Batch) -> Batch:
            mask = np.where(b["valid"][:, None, None], masks[b["label"]], VOC_IGNORE_INDEX).astype(np.int32)
            return dict(image=b["image"], mask=mask, valid=b["valid"])

        return map(with_mask, batches)
    if kind != "tfds" or arg != VOC_BUILDER_NAME:
        raise ValueError(f"segmentation data.source must be 'tfds:{VOC_BUILDER_NAME}' or 'embedded', got {kind}:{arg}")
    builder = voc_builder(cfg_get(cfg, "data_dir"), cfg_get(cfg, "manual_dir"), bool(cfg_get(cfg, "download")))
    tf = import_tf()
    ds = builder.as_dataset(split=split, shuffle_files=False)
    n = builder.info.splits[split].num_examples
    fn = _seg_train_map(size, tf) if stream.repeat else _seg_eval_map(size, tf)

    def example_fn(ex):
        image, mask = fn(ex)
        return dict(image=tf.ensure_shape(image, (size, size, 3)), mask=tf.ensure_shape(mask, (size, size)))

    blank = dict(image=tf.zeros((size, size, 3)), mask=tf.fill((size, size), VOC_IGNORE_INDEX))
    return _tf_batches(ds, n, stream, example_fn=example_fn, blank=blank, tf=tf)


# ----------------------------------------------------------------------------------------------
# DIV2K (reconstruction).


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    h, w = (int(s) for s in size)
    return h, w


def cover_crop(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Evaluation view of an image (H0, W0, 3) uint8: resize (bicubic, aspect kept) so it covers (H, W),
    then centre-crop to (H, W)."""
    from PIL import Image

    h, w = _hw(size)
    h0, w0 = image.shape[:2]
    scale = max(h / h0, w / w0)
    nh, nw = max(h, math.ceil(h0 * scale - 1e-6)), max(w, math.ceil(w0 * scale - 1e-6))
    img = Image.fromarray(image).resize((nw, nh), Image.Resampling.BICUBIC) if (nh, nw) != (h0, w0) else None
    arr = np.asarray(img) if img is not None else image
    top, left = (nh - h) // 2, (nw - w) // 2
    return arr[top : top + h, left : left + w]


def make_reconstruction_dataset(cfg: Any, split: str, stream: Stream) -> Iterator[Batch]:
    """DIV2K (or folder / embedded) batches dict(image, valid) of `split` at cfg.image_size (H, W) or S.

    Training (`stream.repeat`) takes random crops with flips; evaluation uses `cover_crop`'s view.
    """
    stream = stream.resolved()
    h, w = _hw(cfg_get(cfg, "image_size", 224))
    kind, arg = parse_source(cfg_get(cfg, "source"))
    if kind in ("embedded", "folder"):
        side = max(h, w)  # square sources (folder images are centre-cropped to a square first)
        images = load_embedded_voc(side)[0] if kind == "embedded" else load_image_folder(arg, side)[0]
        images = np.stack([cover_crop(x, (h, w)) for x in images])
        batches = array_batches(images, np.zeros(len(images), np.int32), stream)
        return (dict(image=b["image"], valid=b["valid"]) for b in batches)
    name = DIV2K_NAME if arg == "div2k" else arg
    builder = tfds_builder(name, cfg_get(cfg, "data_dir"), bool(cfg_get(cfg, "download", False)))
    tf = import_tf()
    ds = builder.as_dataset(split=split, shuffle_files=False)
    n = builder.info.splits[split].num_examples
    key = "hr" if "hr" in builder.info.features else "image"

    def train_fn(ex):
        image = tf.cast(ex[key], tf.float32)
        shape = tf.shape(image)
        scale = tf.maximum(1.0, tf.reduce_max(tf.cast([h, w], tf.float32) / tf.cast(shape[:2], tf.float32)))
        image = tf.image.resize(image, tf.cast(tf.math.ceil(tf.cast(shape[:2], tf.float32) * scale), tf.int32))
        image = tf.image.random_flip_left_right(tf.image.random_crop(image, (h, w, 3)))
        return dict(image=image)

    def eval_fn(ex):
        image = tf.numpy_function(lambda x: cover_crop(x, (h, w)), [ex[key]], tf.uint8)
        return dict(image=tf.cast(tf.ensure_shape(image, (h, w, 3)), tf.float32))

    blank = dict(image=tf.zeros((h, w, 3)))
    return _tf_batches(ds, n, stream, example_fn=train_fn if stream.repeat else eval_fn, blank=blank, tf=tf)


__all__ = [
    "DIV2K_NAME",
    "DatasetUnavailableError",
    "EVAL_SIZES",
    "VOC_BUILDER_NAME",
    "colorize_mask",
    "cover_crop",
    "load_embedded_voc",
    "make_reconstruction_dataset",
    "make_segmentation_dataset",
    "synthetic_image",
    "voc_builder",
    "voc_colormap",
]
