"""Bytes to an RGB Pillow image, the way transformers' `load_image` does it."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

from .errors import MediaError

# Formats we accept; anything else Pillow can open (PSD, EPS, ...) is attack surface we don't need.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF"})
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    param: str | None = None,
    alpha_background: tuple[int, int, int] | None = None,
) -> Image.Image:
    """Decode an encoded image into an RGB image, refusing what we can't or shouldn't decode.

    Matches `transformers.image_utils.load_image`: EXIF orientation is applied
    (`ImageOps.exif_transpose`) and the image is converted with `convert("RGB")`, which drops an
    alpha channel rather than compositing it (so RGBA pixels keep their colour under alpha 0).
    GIFs and other animations yield their first frame.

    `alpha_background`, when set, composites images with transparency onto that colour instead
    (vLLM's loader composites onto white, (255, 255, 255)); the goldens use transformers' way.
    """
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns, then raises at 2x; we enforce our limit before load.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
            width, height = img.size
            if width <= 0 or height <= 0:
                raise MediaError("image has no pixels", code="image_empty", param=param)
            if width * height > max_pixels:
                raise MediaError(
                    f"image is {width}x{height} pixels; the limit is {max_pixels} pixels",
                    code="image_too_many_pixels",
                    param=param,
                )
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode == "RGB":
                return img
            if alpha_background is not None and (
                img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
            ):
                rgba = img.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, (*alpha_background, 255))
                return Image.alpha_composite(canvas, rgba).convert("RGB")
            return img.convert("RGB")
    except MediaError:
        raise
    except (Image.UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise MediaError(
            "image could not be decoded (JPEG, PNG, WebP and GIF are accepted)",
            code="image_undecodable",
            param=param,
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Truncated or corrupt data surfaces from Pillow as any of these.
        raise MediaError(
            f"image data is corrupt: {exc}", code="image_undecodable", param=param
        ) from exc
