"""Reading and writing images, with every input mode converted to 8-bit RGB the same way every time.

Conversions (deterministic, documented in the README):
- ``L`` / ``1`` (grayscale, bilevel): the gray value is copied to R, G and B.
- ``LA`` / ``RGBA`` / ``PA``: the alpha channel is dropped (colour kept as stored, not composited).
- ``P`` (palette): expanded through the palette, then as above.
- 16-bit and 32-bit integer modes (``I;16``, ``I;16B``, ``I``): scaled to 8 bits with ``round(v / 257)``.
- 16-bit RGB and RGBA (PNG, TIFF): ``round(v / 257)`` per channel too. Pillow keeps only the high byte of these, so
  the file is decoded a second time for the low bytes (16-bit grey with alpha keeps Pillow's high byte).
- ``F`` (float): assumed in [0, 255], rounded and clipped.
- ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's conversion to ``RGB``.

An image with more pixels than Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, about 89 megapixels)
is refused before it is decoded, like any unreadable image (:class:`ImageError` naming the file).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from srnas.atomic import atomic_path
from srnas.errors import ImageError

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name. Hidden files are ignored."""
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(img, dtype=np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("L", "1"):
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "LA":
        gray = np.asarray(img, dtype=np.uint8)[:, :, 0]
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "PA", "RGBa"):
        return np.ascontiguousarray(np.asarray(img.convert("RGBA"), dtype=np.uint8)[:, :, :3])
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


# Pillow rawmodes of 16-bit multi-channel images, of which it keeps the high byte only
_WIDE_RAWMODE = re.compile(r"^(RGBA?);16([BLN])$")


def _tile_rawmode(args: object) -> str | None:
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _low_byte_tiles(img: Image.Image) -> list | None:
    """For a 16-bit RGB(A) image not yet loaded: its tiles with the rawmode that unpacks the low byte of each sample
    (the opposite byte order); None for any other image."""
    tiles = []
    for tile in getattr(img, "tile", None) or ():
        match = _WIDE_RAWMODE.match(_tile_rawmode(tile.args) or "")
        if match is None:
            return None
        order = match.group(2) if match.group(2) != "N" else ("L" if sys.byteorder == "little" else "B")
        low = f"{match.group(1)};16{'B' if order == 'L' else 'L'}"
        tiles.append(tile._replace(args=low if isinstance(tile.args, str) else (low, *tile.args[1:])))
    return tiles or None


def _decode(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse from the first (warning) limit on
        with Image.open(path) as img:
            low_tiles = _low_byte_tiles(img)
            img.load()
            if low_tiles is None:
                return _to_rgb_array(img)
            high = np.asarray(img, dtype=np.uint16)
        with Image.open(path) as again:
            again.tile = low_tiles
            again.load()
            low = np.asarray(again, dtype=np.uint16)
    values = (high << 8 | low)[:, :, :3].astype(np.float64)
    return np.ascontiguousarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as an ``H x W x 3`` uint8 RGB array.

    Raises :class:`ImageError` naming the file when it is missing, not an image, truncated, empty or over the
    decompression-bomb limit.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        array = _decode(path)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused, too many pixels to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode image ({exc})") from None
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{path}: image has no pixels (shape {array.shape})")
    return array


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write an ``H x W x 3`` uint8 array as PNG, atomically."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_png expects HxWx3 uint8, got {rgb.dtype} {rgb.shape}")
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG")
