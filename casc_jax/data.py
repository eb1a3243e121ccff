"""Input streams: TFDS pipelines and in-memory arrays (image folders, the embedded CIFAR-10 sample, npz
archives, read by `casc_jax.image_io`) as training and evaluation batches.

``make_dataset`` yields numpy batches, and the trainer places them on devices::

    dict(image=(B, H, W, 3) float32 in [-1, 1], label=(B,) int32, valid=(B,) bool)

``B`` is the batch size of this process (the trainer passes ``global_batch // process_count``).

- ``repeat=True`` (training): an endless stream, reshuffled every epoch when ``shuffle_seed`` is given.
  Batches run across epoch boundaries, so every batch is full and ``valid`` is all True. For the in-memory
  sources (embedded, folder, npz) the global batches are those of one process, each process taking its
  contiguous block, so a run on P processes sees the data a single process would. TFDS streams read a
  per-process shard (example ``i`` to process ``i % process_count``).
- ``repeat=False`` (evaluation): one pass over this process's shard, in file order unless a
  ``shuffle_seed`` is given. The last batch is padded with zero images (``valid=False``), and every
  process yields the same number of batches, ``ceil(ceil(N / process_count) / B)``. Over all processes,
  each of the ``N`` examples appears exactly once with ``valid=True``.

Sources (``cfg.source``, the ``data`` section of a config):

- ``'tfds:NAME'``, for example ``'tfds:cifar10'``: a TFDS dataset, used only if it is already prepared in
  ``cfg.data_dir``, or downloaded first when ``cfg.download`` is True. Otherwise the call raises
  ``DatasetUnavailableError`` at once, naming the offline options.
- ``'folder:PATH'``: the image files under PATH (recursive, sorted). They are centre-cropped to a square,
  resized, and given label 0.
- ``'embedded'``: 200 bit-exact CIFAR-10 **test** images shipped in ``casc_jax/assets``. Every split name
  gives the same 200 images. The smoke presets train on them only to check the pipeline.
- ``'npz:PATH'`` or ``'npz:train=PATH,test=PATH'``: images in numpy archives, one file for every split or
  one per split. An archive holds either ``images`` (N, H, W, 3) uint8, or encoded files as ``jpeg``
  (all files' bytes concatenated, uint8) with ``offsets`` (N + 1,) int64, as the CIFAR-10 JPEG copies in
  the project's shared data; ``labels`` (N,) is optional. The examples are put in a fixed pseudo-random
  order (seed 0) when loaded, so that any prefix (an evaluation subset) mixes the classes of a
  class-sorted archive.

How a split is read (batch size, shuffle seed, ``repeat``, shard, start) is a ``casc_jax.batching.Stream``.
Training streams resume exactly: ``start_batch=k`` yields the batches an uninterrupted stream would
yield from its k-th batch on (same order, same epochs), so a restored run sees the data it would have.

TensorFlow is imported only on the TFDS path, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from casc_jax import image_io
from casc_jax.batching import Batch, Stream, array_batches, num_eval_batches

ARRAY_SPLITS = ("train", "test", "validation")  # split names of the folder, embedded and npz sources
_CACHE_LIMIT_BYTES = 2 * 1024**3  # cache decoded TFDS shards in memory up to this size
_SHUFFLE_BUFFER_MAX = 50_000

class DatasetUnavailableError(RuntimeError):
    """The configured dataset cannot be loaded here (not prepared, download off or failed)."""


def default_config():
    """The ``data`` config section with its defaults (an ``ml_collections.ConfigDict``)."""
    from ml_collections import config_dict

    return config_dict.ConfigDict(
        dict(
            source="tfds:cifar10",
            image_size=32,
            data_dir=config_dict.placeholder(str),
            download=False,
        )
    )


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg[key]` of a ConfigDict, dict or attribute object, else `default`."""
    if hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


# ----------------------------------------------------------------------------------------------
# Numpy archives (npz source).


def parse_npz_paths(arg: str) -> dict[str, str]:
    """'PATH' -> {'*': PATH}; 'train=A,test=B' -> {'train': A, 'test': B}."""
    if "=" not in arg:
        return {"*": arg}
    paths = {}
    for part in arg.split(","):
        split, sep, path = part.partition("=")
        if not sep or not split or not path:
            raise ValueError(f"data.source=npz:{arg} is malformed; use npz:PATH or npz:train=PATH,test=PATH")
        paths[split.strip()] = path.strip()
    return paths


def npz_path(arg: str, split: str) -> str:
    """The archive of `split` named by an npz source argument (ValueError naming the choices)."""
    paths = parse_npz_paths(arg)
    path = paths.get(split, paths.get("*"))
    if path is None:
        base = split.split("[")[0]
        path = paths.get(base)
    if path is None:
        raise ValueError(f"data.source=npz:{arg} names no archive for split {split!r}; it has {sorted(paths)}")
    return path


# ----------------------------------------------------------------------------------------------
# TFDS source.


def _offline_options(name: str) -> str:
    return (
        "Offline options: --config.data.source=embedded (200 CIFAR-10 test images shipped with casc_jax, "
        "no network), or --config.data.source=folder:PATH (a folder of your own images). When online, "
        f"--config.data.download=True downloads and prepares {name!r} (or prepare it beforehand with "
        "`tfds build` and point --config.data.data_dir at it)."
    )


def tfds_builder(name: str, data_dir: str | None, download: bool):
    """A TFDS builder that is prepared, or DatasetUnavailableError at once. Never touches the network
    unless ``download`` is True."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as exc:
        raise ValueError(f"unknown TFDS dataset {name!r} (data.source=tfds:{name}): {exc}") from exc
    if builder.is_prepared():
        return builder
    where = f"data_dir={data_dir}" if data_dir else f"the default TFDS data_dir ({builder.data_dir})"
    if not download:
        raise DatasetUnavailableError(
            f"TFDS dataset {name!r} is not prepared in {where}, and data.download is False. "
            + _offline_options(name)
        )
    try:
        builder.download_and_prepare()
    except Exception as exc:  # network, disk, or checksum failure: all mean the data is unavailable
        raise DatasetUnavailableError(
            f"downloading TFDS dataset {name!r} into {where} failed: {type(exc).__name__}: {exc}. "
            + _offline_options(name)
        ) from exc
    return builder


def import_tf():
    """Import TensorFlow for tf.data only, hiding accelerators so it never takes GPU/TPU memory."""
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        # RuntimeError: devices already initialised; ValueError: no such device type.
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.set_visible_devices([], kind)
    return tf


def _tf_count(ds, tf) -> int:
    n = int(ds.cardinality())
    if n >= 0:
        return n
    return int(ds.reduce(np.int64(0), lambda count, _: count + 1))


def _tf_example(example: dict, image_size: int, tf) -> dict:
    """A TFDS example -> {'image': uint8 (S, S, 3), 'label': int32}; centre-crop + resize if needed."""
    image = example["image"]
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    if tuple(image.shape[:2]) != (image_size, image_size):
        shape = tf.shape(image)
        h, w = shape[0], shape[1]
        s = tf.minimum(h, w)
        image = tf.image.crop_to_bounding_box(image, (h - s) // 2, (w - s) // 2, s, s)
        image = tf.image.resize(image, (image_size, image_size), method="bicubic", antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    image = tf.ensure_shape(image, (image_size, image_size, 3))
    label = tf.cast(example["label"], tf.int32) if "label" in example else tf.constant(0, tf.int32)
    return dict(image=image, label=label)


def _tfds_split(cfg, name: str, split: str):
    """(tf.data of the whole split in file order, its size, tf), after the availability check."""
    builder = tfds_builder(name, cfg_get(cfg, "data_dir"), bool(cfg_get(cfg, "download", False)))
    tf = import_tf()
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return ds, _tf_count(ds, tf), tf


def _tfds_batches(cfg, name: str, split: str, stream: Stream) -> Iterator[Batch]:
    """tf.data pipeline: shard by process, decode, cache, (shuffle, repeat), scale, batch, prefetch.

    The shuffle is seeded, so the stream is the same on every run and `start_batch` skips into it."""
    import tensorflow_datasets as tfds

    size = image_io.check_image_size(cfg_get(cfg, "image_size", 32))
    ds, n, tf = _tfds_split(cfg, name, split)
    if n == 0:
        raise ValueError(f"TFDS split {split!r} of {name!r} is empty")
    n_local = stream.check_shards(n)
    batch_size, shuffle_seed, repeat = stream.batch_size, stream.shuffle_seed, stream.repeat
    autotune = tf.data.AUTOTUNE
    ds = ds.shard(stream.process_count, stream.process_index)
    ds = ds.map(lambda ex: _tf_example(ex, size, tf), num_parallel_calls=autotune)
    if n_local * size * size * 3 <= _CACHE_LIMIT_BYTES:
        ds = ds.cache()
    if shuffle_seed is not None:
        buffer = max(1, min(n_local, _SHUFFLE_BUFFER_MAX))
        ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def scale(ex):
        image = tf.cast(ex["image"], tf.float32) / 127.5 - 1.0
        return dict(image=image, label=ex["label"], valid=tf.constant(True))

    ds = ds.map(scale, num_parallel_calls=autotune)
    if not repeat:
        pad = num_eval_batches(n, batch_size, stream.process_count) * batch_size - n_local
        blank = dict(
            image=tf.zeros((size, size, 3), tf.float32),
            label=tf.constant(0, tf.int32),
            valid=tf.constant(False),
        )
        ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(pad))
    ds = ds.batch(batch_size, drop_remainder=True)
    if stream.start_batch:
        ds = ds.skip(stream.start_batch)
    ds = ds.prefetch(autotune)
    return iter(tfds.as_numpy(ds))


# ----------------------------------------------------------------------------------------------
# Entry points.


SOURCE_KINDS = ("tfds", "folder", "npz")


def parse_source(source: str) -> tuple[str, str]:
    """'tfds:NAME' -> ('tfds', NAME), 'folder:PATH' -> ('folder', PATH), 'npz:...' -> ('npz', ...),
    'embedded' -> ('embedded', '')."""
    if not isinstance(source, str):
        raise ValueError(f"data.source must be a string, got {source!r}")
    if source == "embedded":
        return "embedded", ""
    kind, sep, arg = source.partition(":")
    if sep and kind in SOURCE_KINDS and arg:
        return kind, arg
    raise ValueError(
        f"unknown data.source {source!r}; use 'tfds:NAME' (e.g. tfds:cifar10), 'folder:PATH', 'npz:PATH' "
        "(or npz:train=PATH,test=PATH) or 'embedded'"
    )


def _array_source(cfg, kind: str, arg: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in ARRAY_SPLITS:
        raise ValueError(f"data.source={kind} supports the splits {ARRAY_SPLITS}, got {split!r}")
    size = cfg_get(cfg, "image_size", 32)
    if kind == "npz":
        images, labels = image_io.load_npz(npz_path(arg, split))
        if images.shape[1:3] != (size, size):
            raise ValueError(
                f"{npz_path(arg, split)} holds {images.shape[1]}x{images.shape[2]} images but data.image_size is "
                f"{size}; set --config.data.image_size={images.shape[1]} or use images of that size"
            )
        return images, labels
    return image_io.load_embedded(size) if kind == "embedded" else image_io.load_image_folder(arg, size)


def make_dataset(cfg, split: str, stream: Stream) -> Iterator[Batch]:
    """Numpy batches of ``split`` for this process, read as ``stream`` says; the layout is in the module
    docstring.

    Args:
      cfg: the ``data`` config section: ``source``, ``image_size``, ``data_dir``, ``download``.
      split: a TFDS split ('train', 'test', 'train[:90%]') or, for folder/embedded/npz, one of
        ``ARRAY_SPLITS`` (folder and embedded give the same images for all of them).
      stream: batch size, order, repetition, shard and start (:class:`Stream`).

    Raises:
      DatasetUnavailableError: a TFDS dataset that is not prepared and cannot be downloaded.
      FileNotFoundError, ValueError: a bad source, folder or image file (the message names it).
    """
    stream = stream.resolved()
    kind, arg = parse_source(cfg_get(cfg, "source"))
    if kind == "tfds":
        return _tfds_batches(cfg, arg, split, stream)
    images, labels = _array_source(cfg, kind, arg, split)
    return array_batches(images, labels, stream)


def num_examples(cfg, split: str) -> int:
    """Number of examples N in ``split`` over all processes (for epochs -> steps and eval counts)."""
    kind, arg = parse_source(cfg_get(cfg, "source"))
    if kind == "tfds":
        return _tfds_split(cfg, arg, split)[1]
    if split not in ARRAY_SPLITS:
        raise ValueError(f"data.source={kind} supports the splits {ARRAY_SPLITS}, got {split!r}")
    if kind == "embedded":
        return len(image_io.load_embedded()[1])
    if kind == "npz":
        return len(image_io.load_npz(npz_path(arg, split))[1])
    return len(image_io.list_image_files(arg))
