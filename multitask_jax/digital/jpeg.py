"""JPEG source coding (Pillow) at the highest quality that fits a bit budget.

The file is sent as it is (headers included, Huffman tables optimised, 4:2:0 chroma subsampling by
default) and zero-padded to the payload size; a JPEG decoder stops at the end-of-image marker, so
the padding needs no length field. Decoding never invents an image: bytes Pillow cannot decode, or
decode to the wrong size, come back as None.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

QUALITIES = range(1, 96)  # Pillow's useful range; above 95 the quantisers are ~1 and files explode


def encode(image: np.ndarray, quality: int, subsampling: int = 2, optimize: bool = True) -> bytes:
    """(H, W, 3) uint8 -> JPEG bytes at `quality` (1..95); subsampling 0, 1, 2 = 4:4:4, 4:2:2, 4:2:0."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}; convert with to_uint8")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality), subsampling=subsampling, optimize=optimize)
    return buf.getvalue()


def fit_quality(image: np.ndarray, max_bits: int, **kwargs) -> tuple[int, bytes]:
    """(quality, bytes) of the highest quality whose file has at most `max_bits` bits; (0, b'') if none does.

    Every quality is tried (file size is not strictly monotone in quality), highest first.
    """
    for q in reversed(QUALITIES):
        data = encode(image, q, **kwargs)
        if 8 * len(data) <= max_bits:
            return q, data
    return 0, b""


def decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray | None:
    """JPEG bytes -> (H, W, 3) uint8, or None if Pillow cannot decode them to `shape`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            out = np.asarray(im.convert("RGB"))
    except Exception:  # noqa: BLE001 - any decoder error is a failed transmission
        return None
    return out if out.shape == tuple(shape) else None


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float images in [-1, 1] (the project's convention) or [0, 1] floats as uint8; uint8 unchanged."""
    if image.dtype == np.uint8:
        return image
    x = np.asarray(image, np.float64)
    if x.min() < 0:
        x = (x + 1.0) / 2.0
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def bytes_to_bits(data: bytes, n_bits: int) -> np.ndarray:
    """Bytes -> (n_bits,) uint8 bits, MSB first, zero-padded."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    if len(bits) > n_bits:
        raise ValueError(f"{len(bits)} bits do not fit the {n_bits}-bit payload; lower the JPEG quality")
    return np.pad(bits, (0, n_bits - len(bits)))


def bits_to_bytes(bits: np.ndarray) -> bytes:
    """(n,) bits -> bytes (trailing partial byte zero-filled)."""
    return np.packbits(np.asarray(bits, np.uint8)).tobytes()
