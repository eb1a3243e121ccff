"""TFDS builder for PASCAL VOC 2012 semantic segmentation (TFDS's own `voc` has no masks).

Reads the official trainval layout, from the tar or from its extracted folder:

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png        palette PNG: indices 0..20, 255 = boundary/void
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt

Sources, in order: the manual dir (`download_config.manual_dir`) holding `VOCtrainval_11-May-2012.tar`, or
an extracted `VOCdevkit/VOC2012` (or `VOC2012`, or the VOC2012 folder itself); else the official URL
(only when the caller allows downloads). Splits: 'train' (1464 images) and 'validation' (1449).

Example features: image uint8 (H, W, 3), segmentation_mask uint8 (H, W, 1) of class indices (the palette
indices of the PNG, never its colours), file_name '<id>'.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC_TAR = "VOCtrainval_11-May-2012.tar"
NUM_CLASSES = 21
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
SPLIT_FILES = {"train": "train.txt", "validation": "val.txt"}


def find_voc_root(folder: str | os.PathLike) -> pathlib.Path | None:
    """The VOC2012 folder (with JPEGImages, SegmentationClass, ImageSets) under `folder`, or None."""
    folder = pathlib.Path(folder)
    for cand in (folder / "VOCdevkit" / "VOC2012", folder / "VOC2012", folder):
        if (cand / "SegmentationClass").is_dir() and (cand / "ImageSets" / "Segmentation").is_dir():
            return cand
    return None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A VOC SegmentationClass PNG -> uint8 (H, W) class indices (255 = void); rejects RGB masks."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected a palette (P) or index (L) PNG, got mode {img.mode}")
        return np.asarray(img, np.uint8)


class Voc2012Segmentation(tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC 2012 semantic segmentation (21 classes, 255 = void)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: trainval segmentation splits."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Place {VOC_TAR} (from {VOC_URL}) or its extracted VOCdevkit/VOC2012 folder in the manual dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="PASCAL VOC 2012 semantic segmentation: images and class-index masks (255 = void).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "segmentation_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "segmentation_mask"),
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        )

    def _voc_root(self, dl_manager) -> pathlib.Path:
        manual = None
        try:
            manual = dl_manager.manual_dir
        except AssertionError:  # no manual dir configured
            manual = None
        if manual is not None and os.path.isdir(manual):
            root = find_voc_root(manual)
            if root is not None:
                return root
            tar = pathlib.Path(manual) / VOC_TAR
            if tar.exists():
                root = find_voc_root(dl_manager.extract(os.fspath(tar)))
                if root is None:
                    raise ValueError(f"{tar} does not hold VOCdevkit/VOC2012 with segmentation masks")
                return root
        root = find_voc_root(dl_manager.download_and_extract(VOC_URL))
        if root is None:
            raise ValueError(f"the archive from {VOC_URL} does not hold VOCdevkit/VOC2012")
        return root

    def _split_generators(self, dl_manager):
        root = self._voc_root(dl_manager)
        return {split: self._generate_examples(root, name) for split, name in SPLIT_FILES.items()}

    def _generate_examples(self, root: pathlib.Path, split_file: str):
        ids = (root / "ImageSets" / "Segmentation" / split_file).read_text().split()
        for image_id in ids:
            yield image_id, {
                "image": os.fspath(root / "JPEGImages" / f"{image_id}.jpg"),
                "segmentation_mask": read_mask(root / "SegmentationClass" / f"{image_id}.png")[..., None],
                "file_name": image_id,
            }
