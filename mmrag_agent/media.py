"""Media helpers shared by every layer: safe image loading (size limits before decoding, full decode check, EXIF
orientation) and torch dtype names."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

#: Default pixel budget (width x height) above which an image is refused: 8192 x 8192.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192

_EXIF_IMAGE_DESCRIPTION = 0x010E
_EXIF_ORIENTATION = 0x0112


class ImageRejected(ValueError):
    """An image file that cannot be indexed; the message names the reason and the fix."""


@dataclass
class LoadedImage:
    """A decoded, upright RGB image and what was learned while loading it.

    ``width`` and ``height`` are the upright size of the image in the file; ``image`` may be smaller when a
    ``max_side`` was asked for.
    """

    image: Image.Image
    width: int
    height: int
    format: str
    exif_description: str | None
    exif_orientation: int | None


#: Longest EXIF ImageDescription kept (characters); the rest is cut.
MAX_EXIF_DESCRIPTION = 2000


def load_image(
    path: str | Path | IO[bytes], max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_side: int | None = None
) -> LoadedImage:
    """Open an image defensively and return it upright in RGB.

    The declared size is checked against ``max_pixels`` from the header, before any pixel is decoded,
    so a decompression bomb costs nothing. The whole image is then decoded, so a truncated file fails
    here rather than later inside a model. EXIF orientation is applied. With ``max_side``, JPEGs are
    decoded directly at a reduced scale (libjpeg's DCT scaling, which still reads every byte) and every
    image is downscaled before it is rotated or converted, so a 12-megapixel photo never exists in full.

    Args:
        path: The image file, or a binary file object holding it.
        max_pixels: Refuse images whose declared width x height exceeds this.
        max_side: If given, downscale (keeping aspect ratio) so that the longer side is at most this.

    Returns:
        A :class:`LoadedImage`.

    Raises:
        ImageRejected: With a message that names the problem and what to do.
        OSError: The file cannot be opened (missing, permissions).

    Example:
        >>> loaded = load_image("photo.jpg", max_side=1024)
        >>> (loaded.width, loaded.height), loaded.image.size   # the file's size, the decoded size
        ((4032, 3024), (1024, 768))
    """
    if isinstance(path, str):
        path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageRejected(
                        f"image declares {width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{max_pixels:,} (decompression-bomb guard); raise max_image_pixels / "
                        f"--max-image-pixels if the image is genuine"
                    )
                fmt = img.format or ""
                exif = _read_exif(img)
                if max_side is not None and max(width, height) > max_side:
                    scale = max_side / max(width, height)
                    img.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))  # JPEG only
                img.load()
                rgb = img if img.mode == "RGB" else img.convert("RGB")
                if max_side is not None and max(rgb.size) > max_side:
                    rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)  # in place
                orientation = _orientation(exif)
                if orientation not in (None, 1):
                    rgb = rgb.transpose(_TRANSPOSE[orientation])  # a new image
    except (ImageRejected, FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not a readable image (unknown or corrupt format); re-export or remove the file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            f"image is too large to decode safely ({exc}) (decompression-bomb guard); "
            "raise max_image_pixels / --max-image-pixels if the image is genuine"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"corrupt or truncated image ({exc}); re-export or remove the file") from None
    except Exception as exc:  # noqa: BLE001 - a decoder may fail in any way on a hostile file
        raise ImageRejected(f"corrupt image ({type(exc).__name__}: {exc}); re-export or remove the file") from None
    if orientation in (5, 6, 7, 8):  # a quarter turn swaps the sides
        width, height = height, width
    return LoadedImage(
        image=rgb,
        width=width,
        height=height,
        format=fmt,
        exif_description=_description(exif),
        exif_orientation=orientation,
    )


#: EXIF orientation -> the transposition that makes the image upright (as ``ImageOps.exif_transpose``).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _read_exif(img: Image.Image) -> dict:
    try:
        return dict(img.getexif())
    except Exception:  # noqa: BLE001 - a broken EXIF block loses only the EXIF data
        return {}


def _orientation(exif: dict) -> int | None:
    value = exif.get(_EXIF_ORIENTATION)
    return value if type(value) is int and 1 <= value <= 8 else None


def _description(exif: dict) -> str | None:
    description = exif.get(_EXIF_IMAGE_DESCRIPTION)
    if isinstance(description, bytes):
        description = description[: 4 * MAX_EXIF_DESCRIPTION].decode("utf-8", "replace")
    if not isinstance(description, str):
        return None
    description = " ".join("".join(c if c.isprintable() else " " for c in description[: 4 * MAX_EXIF_DESCRIPTION]).split())
    return description[:MAX_EXIF_DESCRIPTION].encode("utf-8", "replace").decode("utf-8") or None


def image_to_png_bytes(image: Image.Image) -> io.BytesIO:
    """Encode a PIL image as an in-memory PNG (what LlamaIndex multimodal embeddings accept)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def torch_dtype(name):
    """Map ``"float32" | "float16" | "bfloat16"`` (or a torch dtype) to a torch dtype."""
    import torch

    if not isinstance(name, str):
        return name
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use float32, float16 or bfloat16") from None
