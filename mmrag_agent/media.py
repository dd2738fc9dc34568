"""Media helpers shared by every layer: safe image loading (size limits before decoding, full decode check, EXIF
orientation) and torch dtype names."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

#: Default pixel budget (width x height) above which an image is refused: 8192 x 8192.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192

_EXIF_IMAGE_DESCRIPTION = 0x010E
_EXIF_ORIENTATION = 0x0112


class ImageRejected(ValueError):
    """An image file that cannot be indexed; the message names the reason and the fix."""


@dataclass
class LoadedImage:
    """A decoded, upright RGB image and what was learned while loading it."""

    image: Image.Image
    width: int
    height: int
    format: str
    exif_description: str | None
    exif_orientation: int | None


def load_image(
    path: str | Path | IO[bytes], max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_side: int | None = None
) -> LoadedImage:
    """Open an image defensively and return it upright in RGB.

    The declared size is checked against ``max_pixels`` from the header, before any pixel is decoded,
    so a decompression bomb costs nothing. The whole image is then decoded, so a truncated file fails
    here rather than later inside a model. EXIF orientation is applied.

    Args:
        path: The image file, or a binary file object holding it.
        max_pixels: Refuse images whose declared width x height exceeds this.
        max_side: If given, downscale (keeping aspect ratio) so that the longer side is at most this.

    Returns:
        A :class:`LoadedImage`.

    Raises:
        ImageRejected: With a message that names the problem and what to do.
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
                exif = img.getexif()
                img.load()
                upright = ImageOps.exif_transpose(img)
                rgb = upright.convert("RGB")
    except ImageRejected:
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
    if max_side is not None and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    description = exif.get(_EXIF_IMAGE_DESCRIPTION)
    if isinstance(description, bytes):
        description = description.decode("utf-8", "replace")
    description = description.strip("\x00 \n\t") if isinstance(description, str) else None
    return LoadedImage(
        image=rgb,
        width=rgb.width,
        height=rgb.height,
        format=fmt,
        exif_description=description or None,
        exif_orientation=exif.get(_EXIF_ORIENTATION),
    )


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
