"""Image files and archives: pixel scaling, reading and resizing files (Pillow), a user's images for
`transmit` and back to their size, PNG output, grids, the embedded CIFAR-10 sample, and npz archives.

`casc_jax.data` builds the training and evaluation streams on top of these arrays.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import math
import os
import pathlib
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
EMBEDDED_ASSET = "cifar10_test_200.npz"
NPZ_ORDER_SEED = 0  # the fixed order of an npz source's examples
LETTERBOX_RGB = (128, 128, 128)  # pad colour of fit='pad', 0.0039 in [-1, 1]

PathLike = str | os.PathLike

# ----------------------------------------------------------------------------------------------
# Pixel scaling.


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1] (x / 127.5 - 1), any shape."""
    return np.asarray(images, np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> uint8, rounding to nearest and clipping; the inverse of ``to_float``."""
    images = np.asarray(images, np.float32)
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or Inf; cannot convert them to uint8 pixels")
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Reading and resizing image files (Pillow).


def list_image_files(folder: PathLike) -> list[pathlib.Path]:
    """The files under ``folder`` (recursive) whose extension is in ``IMAGE_EXTENSIONS``, sorted."""
    root = pathlib.Path(folder).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}; data.source=folder:PATH needs a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(
            f"image folder {root} holds no image files (looked for {', '.join(IMAGE_EXTENSIONS)}, "
            "recursively)"
        )
    return files


def _to_rgb(img):
    """Any Pillow mode -> RGB. Alpha is composited on white; 16-bit grey is scaled to 8 bits."""
    from PIL import Image

    if img.mode.startswith("I"):  # 16/32-bit integer grey, e.g. a 16-bit grayscale PNG
        grey = np.clip(np.asarray(img, np.float64) / 257.0, 0, 255)
        img = Image.fromarray(np.rint(grey).astype(np.uint8), mode="L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _open_rgb(path: PathLike):
    """Open an image file as an RGB Pillow image, EXIF orientation applied. Errors name the file."""
    from PIL import Image, ImageOps

    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(
            f"cannot read image file {path}: {exc}. Use a valid {'/'.join(IMAGE_EXTENSIONS)} image."
        ) from exc


def read_image(path: PathLike) -> np.ndarray:
    """One image file as uint8 RGB (H, W, 3), EXIF orientation applied. FileNotFoundError for a missing
    file, ValueError for an unreadable one; both name the file."""
    return np.asarray(_open_rgb(path), np.uint8)


def _resize(img, width: int, height: int):
    from PIL import Image

    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.BICUBIC)


def _center_crop_resize(img, size: int):
    """Centre-crop to a square of side min(H, W), then resize to (size, size) (bicubic)."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return _resize(img.crop((left, top, left + s, top + s)), size, size)


def letterbox_box(original_size: tuple[int, int], image_size: int) -> tuple[int, int, int, int]:
    """Where ``fit='pad'`` puts an (h, w) image inside the (image_size, image_size) square.

    Returns (top, left, height, width): the image is scaled by image_size / max(h, w), keeping its
    aspect ratio, and centred.
    """
    h, w = original_size
    scale = image_size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return (image_size - nh) // 2, (image_size - nw) // 2, nh, nw


def _letterbox(img, size: int):
    from PIL import Image

    top, left, nh, nw = letterbox_box((img.height, img.width), size)
    canvas = Image.new("RGB", (size, size), LETTERBOX_RGB)
    canvas.paste(_resize(img, nw, nh), (left, top))
    return canvas


def check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return int(image_size)


def _check_fit(fit: str) -> str:
    if fit not in ("pad", "crop"):
        raise ValueError(f"fit must be 'pad' (letterbox) or 'crop' (centre crop), got {fit!r}")
    return fit


def load_images_for_transmit(
    paths: PathLike | Sequence[PathLike], image_size: int, *, fit: str = "pad"
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A user's own image files -> model input X.

    Args:
      paths: image files of any size and mode (grey, palette, RGBA with alpha on white, 16-bit).
      image_size: side S of the square model input.
      fit: 'pad' scales the image to fit inside S x S, keeping its aspect ratio, and centres it on a
        grey (128) background (letterbox, see ``letterbox_box``). 'crop' centre-crops the largest
        square and resizes it. Both resize with bicubic filtering.

    Returns:
      X (N, S, S, 3) float32 in [-1, 1], and the original (height, width) of each file, which
      ``restore_size`` uses to map a reconstruction back.

    Raises:
      FileNotFoundError for a missing file, ValueError for an unreadable one. Both name the file.
    """
    size, fit = check_image_size(image_size), _check_fit(fit)
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("no image files given to transmit")
    fit_fn = _letterbox if fit == "pad" else _center_crop_resize
    images, sizes = [], []
    for path in paths:
        img = _open_rgb(path)
        sizes.append((img.height, img.width))
        images.append(np.asarray(fit_fn(img, size), np.uint8))
    return to_float(np.stack(images)), sizes


def restore_size(image: np.ndarray, original_size: tuple[int, int], *, fit: str = "pad") -> np.ndarray:
    """Undo ``load_images_for_transmit``'s fit on one (S, S, 3) image in [-1, 1].

    'pad': cut out the letterbox content and resize it to the original (h, w). 'crop': the cropped-off
    borders cannot come back, so the result is the centre square resized to (min(h, w), min(h, w)).
    Returns (h', w', 3) float32 in [-1, 1].
    """
    from PIL import Image

    fit = _check_fit(fit)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[2] != 3:
        raise ValueError(f"expected one square (S, S, 3) image, got shape {image.shape}")
    h, w = original_size
    pil = Image.fromarray(to_uint8(image))
    if fit == "pad":
        top, left, nh, nw = letterbox_box((h, w), image.shape[0])
        pil = _resize(pil.crop((left, top, left + nw, top + nh)), w, h)
    else:
        pil = _resize(pil, min(h, w), min(h, w))
    return to_float(np.asarray(pil))


def save_png(image: np.ndarray, path: PathLike) -> pathlib.Path:
    """Write one image in [-1, 1], (H, W, 3), (H, W, 1) or (H, W), as an 8-bit PNG. Returns the path."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"save_png expects (H, W, 3), (H, W, 1) or (H, W), got shape {image.shape}")
    path = pathlib.Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path, format="PNG")
    return path


def image_grid(images: np.ndarray, ncols: int, *, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile (N, H, W, C) images in [-1, 1] into one uint8 grid, row by row.

    With n = min(ncols, N) columns and r = ceil(N / n) rows, the result is
    (r*H + (r+1)*padding, n*W + (n+1)*padding, C). Borders and empty cells are ``pad_value``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"image_grid expects (N, H, W, 1 or 3) with N >= 1, got shape {images.shape}")
    if isinstance(ncols, bool) or not isinstance(ncols, int | np.integer) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    n, h, w, c = images.shape
    cols = min(int(ncols), n)
    rows = math.ceil(n / cols)
    p = padding
    grid = np.full((rows * h + (rows + 1) * p, cols * w + (cols + 1) * p, c), pad_value, np.uint8)
    for i, img in enumerate(to_uint8(images)):
        r, q = divmod(i, cols)
        y, x = p + r * (h + p), p + q * (w + p)
        grid[y : y + h, x : x + w] = img
    return grid


# ----------------------------------------------------------------------------------------------
# Array sources: embedded CIFAR-10 sample and image folders.


@functools.cache
def _embedded_arrays() -> tuple[np.ndarray, np.ndarray]:
    resource = importlib.resources.files("casc_jax") / "assets" / EMBEDDED_ASSET
    with np.load(io.BytesIO(resource.read_bytes())) as npz:
        images, labels = npz["images"], npz["labels"].astype(np.int32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_embedded(image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The 200 embedded CIFAR-10 test images: uint8 (200, S, S, 3) and int32 labels (200,).

    S = 32 gives the exact pixels; another S resizes them (bicubic). The arrays are read-only.
    """
    size = check_image_size(image_size)
    images, labels = _embedded_arrays()
    if size != images.shape[1]:
        from PIL import Image

        images = np.stack([np.asarray(_resize(Image.fromarray(x), size, size)) for x in images])
    return images, labels


def load_image_folder(folder: PathLike, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All images under ``folder``, centre-cropped and resized: uint8 (N, S, S, 3), labels zeros (N,)."""
    size = check_image_size(image_size)
    images = [np.asarray(_center_crop_resize(_open_rgb(f), size), np.uint8) for f in list_image_files(folder)]
    return np.stack(images), np.zeros(len(images), np.int32)


# ----------------------------------------------------------------------------------------------
# Numpy archives: uint8 images or encoded files plus offsets.


def decode_images(blob: np.ndarray, offsets: np.ndarray, path: PathLike) -> list[np.ndarray]:
    """Encoded files (JPEG, PNG, ...) concatenated in ``blob`` (uint8), file i at
    ``blob[offsets[i]:offsets[i + 1]]``: a list of uint8 RGB (H_i, W_i, 3). ValueError naming ``path`` for
    bad offsets or a file that cannot be decoded."""
    from PIL import Image

    offsets = np.asarray(offsets).astype(np.int64)
    if offsets.ndim != 1 or len(offsets) < 2 or np.any(np.diff(offsets) <= 0) or offsets[-1] > blob.size:
        raise ValueError(f"{path}: 'offsets' must be increasing (N + 1,) positions into 'jpeg'")
    images = []
    for i in range(len(offsets) - 1):
        try:
            with Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())) as img:
                images.append(np.asarray(img.convert("RGB"), np.uint8))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{path}: encoded image {i} cannot be decoded ({exc}); the archive is corrupt") from exc
    return images


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, path: str) -> np.ndarray:
    images = decode_images(blob, offsets, path)
    if len({x.shape for x in images}) > 1:
        raise ValueError(f"{path}: the encoded images differ in size; an npz source needs images of one size")
    return np.stack(images)


def read_npz(path: PathLike, keys: Sequence[str], what: str = "data.source=npz:...") -> dict[str, np.ndarray]:
    """The arrays ``keys`` (those present) of an npz archive, read whole. FileNotFoundError for a missing
    file (naming ``what`` uses it), ValueError for one that is not a readable archive."""
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"npz archive not found: {file} ({what})")
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files if k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # truncated or damaged
        raise ValueError(f"{file} is not a readable npz archive ({exc})") from exc


@functools.cache
def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """An npz archive -> uint8 images (N, H, W, 3) and int32 labels (N,), in the source's fixed order.

    Accepts ``images`` (N, H, W, 3) uint8, or ``jpeg`` + ``offsets`` (encoded files); ``labels`` optional.
    """
    file = pathlib.Path(path).expanduser()
    arrays = read_npz(file, ("images", "jpeg", "offsets", "labels"))
    if "images" in arrays:
        images = arrays["images"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{file}: 'images' must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    elif "jpeg" in arrays and "offsets" in arrays:
        images = _decode_jpegs(arrays["jpeg"], arrays["offsets"], str(file))
    else:
        raise ValueError(f"{file} holds neither 'images' nor 'jpeg' + 'offsets' (it has {sorted(arrays) or 'none'})")
    labels = arrays.get("labels", np.zeros(len(images)))
    if len(labels) != len(images):
        raise ValueError(f"{file}: {len(labels)} labels for {len(images)} images")
    order = np.random.default_rng(NPZ_ORDER_SEED).permutation(len(images))
    images, labels = images[order], labels[order].astype(np.int32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels
