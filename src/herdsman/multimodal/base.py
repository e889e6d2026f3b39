"""What every model family's image processor shares: the result type, the config reading, the
exact-as-transformers rescale/normalize, and placeholder expansion in token ids."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

try:  # Pillow-exact resampling and the post-resize steps in C (setup.py builds it).
    from . import _resample
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    _resample = None

log = logging.getLogger(__name__)

# transformers' PILImageResampling values are Pillow's; configs store the integer.
RESAMPLE = {
    0: Image.Resampling.NEAREST,
    1: Image.Resampling.LANCZOS,
    2: Image.Resampling.BILINEAR,
    3: Image.Resampling.BICUBIC,
    4: Image.Resampling.BOX,
    5: Image.Resampling.HAMMING,
}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ProcessedImages:
    """Tensors for one request's images, in the layout the model's vision tower expects.

    `pixel_values` is float32. `model_specific` holds the extra tensors the engine needs (e.g.
    `image_grid_thw`). `num_placeholders[i]` is how many image-token slots image i takes in the
    prompt; `placeholder_tokens[i]`, when set, is the exact token sequence (with separators) that
    replaces image i's single placeholder.
    """

    pixel_values: np.ndarray
    model_specific: dict[str, np.ndarray] = field(default_factory=dict)
    num_placeholders: list[int] = field(default_factory=list)
    placeholder_tokens: list[list[int]] | None = None

    @property
    def nbytes(self) -> int:
        return int(self.pixel_values.nbytes + sum(v.nbytes for v in self.model_specific.values()))


def normalize_lut(
    rescale_factor: float | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> np.ndarray:
    """A (3, 256) float32 table mapping each uint8 value to its rescaled, normalized value.

    transformers computes `float32(float64(x) * rescale_factor)` then `(x - mean32) / std32` in
    float32. Every uint8 input has only 256 possible outputs per channel, so tabulating them with
    the same float operations gives bit-identical results for one gather instead of three passes.
    """
    values = np.arange(256, dtype=np.uint8)
    if rescale_factor is not None:
        base = (values.astype(np.float64) * rescale_factor).astype(np.float32)
    else:
        base = values.astype(np.float32)
    lut = np.repeat(base[None, :], 3, axis=0)
    if mean is not None and std is not None:
        m = np.asarray(mean, dtype=np.float32).reshape(3, 1)
        s = np.asarray(std, dtype=np.float32).reshape(3, 1)
        lut = (lut - m) / s
    return np.ascontiguousarray(lut, dtype=np.float32)


def apply_lut_chw(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """uint8 HWC -> normalized float32 CHW."""
    h, w, c = img.shape
    out = np.empty((c, h, w), dtype=np.float32)
    ext = extension()
    if (
        ext is not None
        and img.dtype == np.uint8
        and img.strides[2] == 1
        and lut.dtype == np.float32
        and lut.shape[1:] == (256,)
        and lut.flags.c_contiguous
    ):
        ext.lut_chw(img, lut[:c], out)
        return out
    for ch in range(c):
        np.take(lut[ch], img[:, :, ch], out=out[ch])
    return out


# Filters the extension reproduces; NEAREST (0) stays on Pillow.
_EXT_FILTERS = frozenset((1, 2, 3, 4, 5))
_EXT_MODES = {"L": 1, "RGB": 3}
_warned_slow = False


def extension():
    """The C extension module, or None (then warn once that the Pillow/numpy path is used)."""
    global _warned_slow
    if _resample is None and not _warned_slow:
        _warned_slow = True
        log.warning(
            "herdsman.multimodal._resample is not built: image resizing and normalisation "
            "use the slower Pillow/numpy path (same output)"
        )
    return _resample


def resize_array(img: Image.Image, height: int, width: int, resample: int) -> np.ndarray:
    """`np.asarray(resize(img, height, width, resample))`, without a Pillow image for the result.

    L and RGB images with a convolution filter go through the C extension, which reproduces
    Pillow's fixed-point resampling bit for bit (see _resample.c); anything else through Pillow.
    """
    if img.size == (width, height):
        return np.asarray(img)
    ext = extension()
    if ext is not None and resample in _EXT_FILTERS and img.mode in _EXT_MODES:
        channels = _EXT_MODES[img.mode]
        out = np.empty((height, width, 3) if channels == 3 else (height, width), dtype=np.uint8)
        h, w = img.height, img.width
        # Pillow's pixels are read in place: np.asarray(img) would copy them (tobytes), and
        # for large images that copy costs about as much as the resize.
        try:
            # The Arrow C data interface: a stable ABI, for images in one memory block.
            _schema, array = img.__arrow_c_array__()
        except ValueError:  # images over 16 MB span several blocks
            try:
                # Pillow's image header behind Image.getim(), checked field by field in C.
                ext.resample_pillow(img.getim(), h, w, channels, out, resample)
            except ValueError:
                ext.resample(np.asarray(img), out, resample)
        else:
            ext.resample_arrow(array, h, w, channels, out, resample)
        return out
    return np.asarray(img.resize((width, height), resample=RESAMPLE[resample]))


def resize(img: Image.Image, height: int, width: int, resample: int) -> Image.Image:
    """transformers resizes uint8 images through Pillow with no reducing_gap; so do we (or the
    C extension, which gives the same pixels)."""
    if img.size == (width, height):
        # Pillow's resize to the same size is an identity copy for every filter.
        return img
    if _resample is not None and resample in _EXT_FILTERS and img.mode in _EXT_MODES:
        return Image.fromarray(resize_array(img, height, width, resample))
    extension()
    return img.resize((width, height), resample=RESAMPLE[resample])


class ImageProcessor:
    """Base class: subclasses read their preprocessor_config.json values in `__init__`."""

    #: `model_type`s and `image_processor_type`s this class serves (for the registry).
    model_types: ClassVar[tuple[str, ...]] = ()
    processor_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = dict(config)
        self.resample = int(config.get("resample", 3))
        self.do_rescale = bool(config.get("do_rescale", True))
        self.rescale_factor = float(config.get("rescale_factor", 1 / 255))
        self.do_normalize = bool(config.get("do_normalize", True))
        self.image_mean = tuple(config.get("image_mean") or CLIP_MEAN)
        self.image_std = tuple(config.get("image_std") or CLIP_STD)
        self.lut = normalize_lut(
            self.rescale_factor if self.do_rescale else None,
            self.image_mean if self.do_normalize else None,
            self.image_std if self.do_normalize else None,
        )

    def preprocess(self, images: Sequence[Image.Image]) -> ProcessedImages:
        raise NotImplementedError

    def num_placeholders_for(self, height: int, width: int) -> int:
        """Placeholder count for an image of this size, without processing the pixels."""
        raise NotImplementedError

    def combine(self, results: Sequence[ProcessedImages]) -> ProcessedImages:
        """Separately processed images (e.g. some from the cache) into one request's batch, as
        `preprocess` would have returned them together: concatenated along axis 0."""
        if len(results) == 1:
            return results[0]
        pixel_values = np.concatenate([r.pixel_values for r in results], axis=0)
        keys = results[0].model_specific.keys()
        specific = {k: np.concatenate([r.model_specific[k] for r in results]) for k in keys}
        counts = [c for r in results for c in r.num_placeholders]
        tokens = None
        if all(r.placeholder_tokens is not None for r in results):
            tokens = [t for r in results for t in (r.placeholder_tokens or [])]
        return ProcessedImages(pixel_values, specific, counts, tokens)
