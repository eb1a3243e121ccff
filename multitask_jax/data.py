"""Data of the multi-task system: DIV2K or natural photos (reconstruction), PASCAL VOC 2012 or CamVid
segmentation.

Batches are numpy dicts, as in casc_jax.data:

    reconstruction: dict(image=(B, H, W, 3) float32 in [-1, 1], valid=(B,) bool)
    segmentation:   dict(image=(B, S, S, 3) float32 in [-1, 1], mask=(B, S, S) int32 in 0..20 (VOC) or 0..10
                         (CamVid), or 255 (ignored by the loss and the mIoU), valid=(B,) bool)

Sources (`cfg.source` of the `data` config section):
- reconstruction: 'tfds:div2k' (TFDS `div2k/bicubic_x2`, its 'hr' images; 800 train, 100 validation),
  'folder:PATH', or 'embedded' (the synthetic VOC-mask images below). Training takes random (H, W) crops
  with horizontal flips; evaluation resizes each image (aspect kept, antialiased bicubic) to cover (H, W)
  and takes the centre crop: (224, 224) and (512, 768) (the paper's 224x224 and 768x512, W x H) cases.
- segmentation: 'tfds:voc2012_segmentation' (the project's builder, multitask_jax/voc_builder.py, fed
  from `cfg.manual_dir` or downloaded when `cfg.download`), or 'embedded'. Training resizes the shorter side
  to S (image bilinear, mask nearest), takes a random S x S crop and flips; evaluation scales the longer
  side to S and pads to S x S with image 0 and mask 255, so every real pixel is scored exactly once.
- reconstruction, 'photos:PATH[,eval=A+B | ,holdout=F[,seed=N]][,camvid=DIR]': natural photos of any size
  from a folder (recursive, PNG / JPEG / ...) or an npz (see `load_photos`). The evaluation photos are those
  under the top-level sub-folders `eval` (default CSet5+CSet14+CBSD68: 87 of the shared
  /work/shared/data/photos set; its CSun_Hays80 + CUrban100, 180 photos, train), or, with `holdout`, a
  seeded fraction F of the sorted list (`photo_split`). `camvid=DIR` adds CamVid's 367 train photos to the
  training set. Training takes random (H, W) crops with flips (photos smaller than the crop are resized up
  to cover it first); evaluation ('validation', 'val' or 'test') takes `cover_crop`'s centre view, as DIV2K.
- segmentation, 'camvid:DIR[,eval=crop|pad]': CamVid (11 classes `CAMVID_CLASSES`, SegNet palette
  `camvid_colormap`; void 11 read as 255) from DIR/camvid_{train,val,test}.npz (`load_camvid`; splits
  'train', 'validation' / 'val', 'test'). Training as VOC (shorter side to S, random S x S crop, flips);
  evaluation 'crop' (the default: centre S x S crop at the training scale) or 'pad' as VOC (longer side to S,
  padded with image 0 and mask 255). CamVid's frames share one 3:4 layout, road at the bottom, so 'pad' shows
  the model the scene at 3/4 of its training scale above a black band it never saw; docs/results/multitask_cpu
  measures what that costs. The model needs `model.seg.num_classes = CAMVID_NUM_CLASSES` (11).
  Both are decoded into memory when the stream is made, so a missing path or corrupt file fails there with
  one line naming it, and stream as casc_jax.data's array sources (shuffle, shards, padded single pass,
  exact resume through `start_batch`); training crops are drawn per (seed, batch number, slot).
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
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from casc_jax import image_io
from casc_jax.batching import Batch, Stream, array_batches, index_batches, num_eval_batches
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


def colorize_mask(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Class indices (..., H, W) in 0..255 -> uint8 RGB (..., H, W, 3) in `palette` (256, 3), by default
    the VOC one (`camvid_colormap` for CamVid; `segmentation_palette` picks by data.source)."""
    mask = np.asarray(mask)
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask values must be in [0, 255], got [{mask.min()}, {mask.max()}]")
    return (voc_colormap() if palette is None else np.asarray(palette, np.uint8))[mask.astype(np.int64)]


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
    kind, arg, options = parse_mt_source(cfg_get(cfg, "source"))
    if kind == "camvid":
        return make_camvid_dataset(arg, options, size, split, stream)
    if kind == "embedded":
        images, masks, _ = load_embedded_voc(size)
        batches = array_batches(images, np.arange(len(images), dtype=np.int32), stream)
        def with_mask(b: Batch) -> Batch:
            mask = np.where(b["valid"][:, None, None], masks[b["label"]], VOC_IGNORE_INDEX).astype(np.int32)
            return dict(image=b["image"], mask=mask, valid=b["valid"])

        return map(with_mask, batches)
    if kind != "tfds" or arg != VOC_BUILDER_NAME:
        raise ValueError(f"segmentation data.source must be 'tfds:{VOC_BUILDER_NAME}', 'camvid:DIR' or 'embedded', "
                         f"got {kind}:{arg}")
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
    kind, arg, options = parse_mt_source(cfg_get(cfg, "source"))
    if kind == "photos":
        return make_photo_dataset(arg, options, (h, w), split, stream)
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


# ----------------------------------------------------------------------------------------------
# Decoded in-memory sources: CamVid (segmentation) and natural photos (reconstruction).
#
# Both stream through casc_jax.batching.index_batches, as the array sources of casc_jax.data do (same
# order, shards, padding and exact resume). A training example's crop and flip are drawn from a generator
# seeded by (shuffle seed, batch number, slot in the global batch), so they depend only on the example's
# place in the stream: a stream restarted at `start_batch=k` gives the same batches, every epoch crops
# afresh, and P processes see what one process would.

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
)
CAMVID_NUM_CLASSES = len(CAMVID_CLASSES)  # 11
CAMVID_VOID = 11  # CamVid's "void" label in the archives; read as VOC_IGNORE_INDEX
CAMVID_EVAL = "crop"  # evaluation view: the training scale and layout (see make_camvid_dataset)
CAMVID_FILES = {"train": "camvid_train.npz", "validation": "camvid_val.npz", "val": "camvid_val.npz",
                "test": "camvid_test.npz"}
# The SegNet CamVid colours (class order of CAMVID_CLASSES); void / ignore is black.
CAMVID_PALETTE = np.array(
    [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
     [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]],
    np.uint8,
)
PHOTO_EVAL_FOLDERS = ("CSet5", "CSet14", "CBSD68")  # the photos that evaluate, by top-level sub-folder
PHOTO_EVAL_SPLITS = ("validation", "val", "test")  # split names that read the evaluation photos
MT_SOURCE_KINDS = {"camvid": ("eval",), "photos": ("eval", "holdout", "seed", "camvid")}
_MT_USAGE = {
    "camvid": "camvid:DIR or camvid:DIR,eval=crop (default) | eval=pad",
    "photos": "photos:PATH (a folder or an .npz), with options ,eval=A+B (evaluating sub-folders, default "
              f"{'+'.join(PHOTO_EVAL_FOLDERS)}) or ,holdout=FRACTION[,seed=N]; and ,camvid=DIR to add CamVid's "
              "train photos to the training set",
}


def camvid_colormap() -> np.ndarray:
    """The CamVid palette as (256, 3) uint8 for `colorize_mask`: classes 0..10 in SegNet's colours, the
    rest (VOC_IGNORE_INDEX = void) black."""
    cmap = np.zeros((256, 3), np.uint8)
    cmap[:CAMVID_NUM_CLASSES] = CAMVID_PALETTE
    return cmap


def parse_mt_source(source: Any) -> tuple[str, str, dict[str, str]]:
    """A multi-task `data.source` -> (kind, argument, options).

    'camvid:DIR[,eval=crop|pad]' and 'photos:PATH[,eval=A+B | ,holdout=F[,seed=N]][,camvid=DIR]' give their
    path and options (paths may not contain commas); everything else is casc_jax.data.parse_source's
    (tfds:NAME, folder:PATH, npz:..., embedded) with no options.
    """
    kind, _, rest = source.partition(":") if isinstance(source, str) else ("", "", "")
    if kind not in MT_SOURCE_KINDS:
        return (*parse_source(source), {})
    path, *parts = rest.split(",")
    options: dict[str, str] = {}
    for part in parts:
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not value or key not in MT_SOURCE_KINDS[kind] or key in options:
            raise ValueError(f"data.source={source!r}: bad option {part!r}; use {_MT_USAGE[kind]}")
        options[key] = value
    if not path.strip():
        raise ValueError(f"data.source={source!r} names no path; use {_MT_USAGE[kind]}")
    if kind == "camvid" and options.get("eval", CAMVID_EVAL) not in ("pad", "crop"):
        raise ValueError(f"data.source={source!r}: eval must be 'pad' or 'crop'; use {_MT_USAGE[kind]}")
    if kind == "photos" and "eval" in options and "holdout" in options:
        raise ValueError(f"data.source={source!r}: give eval=... (by sub-folder) or holdout=... (seeded), not both")
    if kind == "photos" and "seed" in options and "holdout" not in options:
        raise ValueError(f"data.source={source!r}: seed=... only applies with holdout=FRACTION")
    return kind, path.strip(), options


def segmentation_classes(source: str) -> tuple[str, ...]:
    """The class names of a segmentation source (CamVid's 11 or VOC's 21)."""
    if parse_mt_source(source)[0] == "camvid":
        return CAMVID_CLASSES
    from multitask_jax.voc_builder import CLASS_NAMES

    return tuple(CLASS_NAMES)


def segmentation_palette(source: str) -> np.ndarray:
    """The (256, 3) palette of a segmentation source, for `colorize_mask`."""
    return camvid_colormap() if parse_mt_source(source)[0] == "camvid" else voc_colormap()


def _camvid_file(root: str, split: str):
    if split not in CAMVID_FILES:
        raise ValueError(f"data.source=camvid:{root} has the splits {tuple(CAMVID_FILES)}, got {split!r}")
    folder = pathlib.Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"CamVid folder not found: {folder} (data.source=camvid:DIR needs a folder holding "
            f"{', '.join(sorted(set(CAMVID_FILES.values())))})"
        )
    return folder / CAMVID_FILES[split]


def _names(arrays: dict[str, np.ndarray], n: int) -> tuple[str, ...]:
    return tuple(str(x) for x in arrays["names"]) if "names" in arrays else tuple(f"{i:05d}" for i in range(n))


@functools.cache
def load_camvid(root: str, split: str) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], tuple[str, ...]]:
    """CamVid `split` ('train', 'validation' / 'val', 'test') from DIR/camvid_{train,val,test}.npz.

    Each archive holds `jpeg` (all JPEG files' bytes, uint8), `offsets` (N + 1,), `labels` (N, H, W) uint8 in
    0..10 or 11 (void) and optionally `names`. Returns the photos uint8 (H, W, 3), the masks uint8 (H, W) in
    0..10 with void as VOC_IGNORE_INDEX (255, which the segmentation loss and mIoU ignore), and the names,
    in file order. FileNotFoundError or ValueError (one line, naming the file) for a missing or bad archive.
    """
    file = _camvid_file(root, split)
    arrays = image_io.read_npz(file, ("jpeg", "offsets", "labels", "names"), what=f"data.source=camvid:{root}")
    missing = sorted({"jpeg", "offsets", "labels"} - arrays.keys())
    if missing:
        raise ValueError(f"{file} is not a CamVid archive: it lacks {missing} (needs jpeg, offsets, labels)")
    images = image_io.decode_images(arrays["jpeg"], arrays["offsets"], file)
    labels = arrays["labels"]
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 3 or len(labels) != len(images):
        raise ValueError(f"{file}: 'labels' must be integer (N={len(images)}, H, W), got {labels.dtype} {labels.shape}")
    bad = [i for i, x in enumerate(images) if x.shape[:2] != labels.shape[1:]]
    if bad:
        raise ValueError(f"{file}: image {bad[0]} is {images[bad[0]].shape[:2]} but its labels are {labels.shape[1:]}")
    if labels.size and (labels.min() < 0 or labels.max() > CAMVID_VOID):
        raise ValueError(f"{file}: labels must be in 0..{CAMVID_VOID} ({CAMVID_VOID} void), got "
                         f"[{labels.min()}, {labels.max()}]")
    masks = np.where(labels == CAMVID_VOID, VOC_IGNORE_INDEX, labels).astype(np.uint8)
    names = _names(arrays, len(images))
    for x in (*images, masks):
        x.flags.writeable = False
    return tuple(images), tuple(masks), names


def _scaled_pair(image: np.ndarray, mask: np.ndarray, size: int, cover: bool) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) resized (bilinear / nearest, aspect kept) so that the shorter side (`cover`) or the
    longer side is `size`, as VOC's `_resized_pair`."""
    shape = np.array(mask.shape, np.float64)
    if cover:
        new = np.ceil(shape * (size / shape.min()) - 1e-6).astype(int)
    else:
        new = np.maximum(np.round(shape * (size / shape.max())), 1).astype(int)
    if tuple(new) == mask.shape:
        return image, mask
    return _resize_pair(image, mask, (int(new[0]), int(new[1])))


def _crop(x: np.ndarray, top: int, left: int, h: int, w: int) -> np.ndarray:
    return x[top : top + h, left : left + w]


def _random_view(rng: np.random.Generator, shape: Sequence[int], h: int, w: int) -> tuple[int, int, bool]:
    """(top, left, flip) of a random (h, w) crop of an image of `shape`, flipped with probability 1/2."""
    top, left = (int(rng.integers(0, shape[i] - c + 1)) for i, c in ((0, h), (1, w)))
    return top, left, bool(rng.random() < 0.5)


def _example_batches(n: int, stream: Stream, train_example, eval_arrays: dict[str, np.ndarray],
                     pads: dict[str, Any]) -> Iterator[Batch]:
    """Batches of N examples: `train_example(i, rng)` -> dict of uint8 arrays (training), else rows of the
    precomputed `eval_arrays`; images scaled to [-1, 1], masks int32, padding rows `pads[key]`, `valid`."""
    batch_size = stream.batch_size
    seed = 0 if stream.shuffle_seed is None else int(stream.shuffle_seed)
    first_slot = stream.process_index * batch_size

    def batch(b: int, idx: np.ndarray) -> Batch:
        if stream.repeat:
            rows = [train_example(int(i), np.random.default_rng([seed, b, first_slot + k])) for k, i in enumerate(idx)]
            arrays = {key: np.stack([r[key] for r in rows]) for key in pads}
        else:
            arrays = {key: value[idx] for key, value in eval_arrays.items()}
        out = {}
        for key, value in arrays.items():
            value = image_io.to_float(value) if key == "image" else value.astype(np.int32)
            full = np.full((batch_size, *value.shape[1:]), pads[key], value.dtype)
            full[: len(idx)] = value
            out[key] = full
        out["valid"] = np.arange(batch_size) < len(idx)
        return out

    return (batch(b, idx) for b, idx in index_batches(n, stream))


def make_camvid_dataset(root: str, options: dict[str, str], size: int, split: str, stream: Stream) -> Iterator[Batch]:
    """CamVid batches dict(image (B, S, S, 3), mask (B, S, S) int32 in 0..10 or 255, valid).

    Training (`stream.repeat`): the shorter side resized to S (image bilinear, mask nearest), a random S x S
    crop, flipped left-right with probability 1/2, as VOC. Evaluation, one pass in file order: 'crop' (the
    default, `CAMVID_EVAL`) takes the centre S x S crop of the training scale; 'pad' (option eval=pad, as
    VOC) scales the longer side to S and pads bottom / right to S x S with image 0 and mask 255, so every
    pixel is scored exactly once, at 3/4 of the training scale.
    """
    images, masks, _ = load_camvid(root, split)
    n = len(images)
    if stream.repeat:
        scaled = [_scaled_pair(x, m, size, cover=True) for x, m in zip(images, masks, strict=True)]

        def train_example(i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
            image, mask = scaled[i]
            top, left, flip = _random_view(rng, mask.shape, size, size)
            image, mask = _crop(image, top, left, size, size), _crop(mask, top, left, size, size)
            return dict(image=image[:, ::-1] if flip else image, mask=mask[:, ::-1] if flip else mask)

        return _example_batches(n, stream, train_example, {}, dict(image=0.0, mask=VOC_IGNORE_INDEX))
    views_image = np.zeros((n, size, size, 3), np.uint8)
    views_mask = np.full((n, size, size), VOC_IGNORE_INDEX, np.uint8)
    crop = options.get("eval", CAMVID_EVAL) == "crop"
    for i, (x, m) in enumerate(zip(images, masks, strict=True)):
        image, mask = _scaled_pair(x, m, size, cover=crop)
        if crop:
            top, left = (mask.shape[0] - size) // 2, (mask.shape[1] - size) // 2
            image, mask = _crop(image, top, left, size, size), _crop(mask, top, left, size, size)
        views_image[i, : mask.shape[0], : mask.shape[1]] = image
        views_mask[i, : mask.shape[0], : mask.shape[1]] = mask
    return _example_batches(n, stream, None, dict(image=views_image, mask=views_mask),
                            dict(image=0.0, mask=VOC_IGNORE_INDEX))


@functools.cache
def load_photos(path: str) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    """The photos of a folder (recursive; PNG, JPEG, ... as casc_jax.image_io reads them, sorted) or of an
    npz archive (`images` (N, H, W, 3) uint8, or `jpeg` + `offsets` of files of any size; optional
    `names`): (names, uint8 RGB (H_i, W_i, 3) images). A folder's names are the files' paths relative to it
    ('CSet5/baby.png'); an archive's are its `names` or the index. One-line FileNotFoundError / ValueError
    naming the path or file otherwise."""
    root = pathlib.Path(path).expanduser()
    if root.suffix == ".npz" or root.is_file():
        arrays = image_io.read_npz(root, ("images", "jpeg", "offsets", "names"), what=f"data.source=photos:{path}")
        if "images" in arrays:
            images = list(arrays["images"])
            if arrays["images"].dtype != np.uint8 or arrays["images"].ndim != 4 or arrays["images"].shape[-1] != 3:
                raise ValueError(f"{root}: 'images' must be uint8 (N, H, W, 3), got {arrays['images'].dtype} "
                                 f"{arrays['images'].shape}")
        elif "jpeg" in arrays and "offsets" in arrays:
            images = image_io.decode_images(arrays["jpeg"], arrays["offsets"], root)
        else:
            raise ValueError(f"{root} holds neither 'images' nor 'jpeg' + 'offsets' (it has "
                             f"{sorted(arrays) or 'none'})")
        names = _names(arrays, len(images))
        if len(names) != len(images):
            raise ValueError(f"{root}: {len(names)} names for {len(images)} images")
    else:
        files = image_io.list_image_files(root)
        names = tuple(f.relative_to(root).as_posix() for f in files)
        images = [image_io.read_image(f) for f in files]
    for x in images:
        x.flags.writeable = False
    return names, tuple(images)


def photo_split(names: Sequence[str], options: dict[str, str], where: str = "photos") -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) indices into `names`, sorted, by one of two deterministic rules:

    - by top-level sub-folder (default): the photos under the folders `options['eval']` ('A+B+...', default
      CSet5+CSet14+CBSD68: 87 photos of the shared photo set) evaluate, all others train (there: CSun_Hays80
      and CUrban100, 180 photos);
    - `options['holdout']` = F in (0, 1): a fraction F of the photos, drawn with seed `options['seed']`
      (default 0) from the sorted list, evaluate (at least one); the rest train.
    """
    n = len(names)
    if "holdout" in options:
        try:
            frac, seed = float(options["holdout"]), int(options.get("seed", 0))
        except ValueError:
            raise ValueError(f"{where}: holdout must be a fraction in (0, 1) and seed an int, got "
                             f"holdout={options['holdout']}, seed={options.get('seed', 0)}") from None
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{where}: holdout must be a fraction in (0, 1), got {frac}")
        n_eval = max(1, round(frac * n))
        if n_eval >= n:
            raise ValueError(f"{where}: holdout={frac} of {n} photos leaves none to train on")
        held = np.random.default_rng(seed).permutation(n)[:n_eval]
        is_eval = np.isin(np.arange(n), held)
    else:
        folders = [f.strip() for f in options.get("eval", "+".join(PHOTO_EVAL_FOLDERS)).split("+") if f.strip()]
        tops = [name.split("/")[0] if "/" in name else "" for name in names]
        is_eval = np.isin(tops, folders)
        if is_eval.all() or not is_eval.any():
            found = sorted({t for t in tops if t}) or ["none"]
            raise ValueError(
                f"{where}: the evaluation sub-folders {'+'.join(folders)} leave "
                f"{'no photos to train on' if is_eval.all() else 'no photos to evaluate'} (its sub-folders: "
                f"{', '.join(found)}); set eval=A+B in data.source or use holdout=FRACTION"
            )
    return np.flatnonzero(~is_eval), np.flatnonzero(is_eval)


def _cover(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """`image` resized up (bicubic, aspect kept) just enough to cover (h, w); unchanged when it does."""
    from PIL import Image

    h0, w0 = image.shape[:2]
    if h0 >= h and w0 >= w:
        return image
    scale = max(h / h0, w / w0)
    nh, nw = max(h, math.ceil(h0 * scale - 1e-6)), max(w, math.ceil(w0 * scale - 1e-6))
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BICUBIC))


def photo_set(path: str, options: dict[str, str], split: str) -> tuple[np.ndarray, ...]:
    """The photos of `split` ('train', or one of PHOTO_EVAL_SPLITS) of a photos source, in a fixed order
    (see `photo_split`); 'train' adds CamVid's train photos when `options['camvid']` names a CamVid folder."""
    if split != "train" and split not in PHOTO_EVAL_SPLITS:
        raise ValueError(f"data.source=photos:{path} has the splits {('train', *PHOTO_EVAL_SPLITS)}, got {split!r}")
    names, images = load_photos(path)
    train, held = photo_split(names, options, where=f"data.source=photos:{path}")
    chosen = tuple(images[i] for i in (train if split == "train" else held))
    if split == "train" and "camvid" in options:
        chosen += load_camvid(options["camvid"], "train")[0]
    return chosen


def make_photo_dataset(path: str, options: dict[str, str], size: Sequence[int], split: str,
                       stream: Stream) -> Iterator[Batch]:
    """Natural-photo batches dict(image (B, H, W, 3), valid) of `split` (see `photo_set`).

    Training: a random (H, W) crop, flipped with probability 1/2, of each photo (photos smaller than the
    crop are first resized up to cover it). Evaluation, one pass: `cover_crop`'s centre view (resized to
    cover (H, W), aspect kept, centre crop), as DIV2K.
    """
    h, w = _hw(size)
    images = photo_set(path, options, split)
    if stream.repeat:
        covered = [_cover(x, h, w) for x in images]

        def train_example(i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
            top, left, flip = _random_view(rng, covered[i].shape, h, w)
            image = _crop(covered[i], top, left, h, w)
            return dict(image=image[:, ::-1] if flip else image)

        return _example_batches(len(images), stream, train_example, {}, dict(image=0.0))
    views = np.stack([cover_crop(x, (h, w)) for x in images])
    return _example_batches(len(images), stream, None, dict(image=views), dict(image=0.0))


def num_examples(cfg: Any, split: str) -> int | None:
    """Examples in `split` of a camvid or photos source (reading it, so a bad path or file fails here,
    before any training); None for the other sources."""
    kind, arg, options = parse_mt_source(cfg_get(cfg, "source"))
    if kind == "camvid":
        return len(load_camvid(arg, split)[0])
    if kind == "photos":
        return len(photo_set(arg, options, split))
    return None


__all__ = [
    "CAMVID_CLASSES",
    "CAMVID_NUM_CLASSES",
    "CAMVID_PALETTE",
    "DIV2K_NAME",
    "DatasetUnavailableError",
    "EVAL_SIZES",
    "PHOTO_EVAL_FOLDERS",
    "VOC_BUILDER_NAME",
    "camvid_colormap",
    "colorize_mask",
    "cover_crop",
    "load_camvid",
    "load_embedded_voc",
    "load_photos",
    "make_reconstruction_dataset",
    "make_camvid_dataset",
    "make_photo_dataset",
    "make_segmentation_dataset",
    "num_examples",
    "parse_mt_source",
    "photo_set",
    "photo_split",
    "segmentation_classes",
    "segmentation_palette",
    "synthetic_image",
    "voc_builder",
    "voc_colormap",
]
