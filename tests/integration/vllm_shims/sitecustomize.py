"""Loaded by every vLLM process of the image tests (the image test puts this folder on PYTHONPATH).

The CPU vLLM venv has no torchvision: PyPI's builds are CUDA builds that break ``import vllm``
(scripts/vllm_env.sh removes them) and no CPU build can be had offline. Two things in
transformers 5.19 need it before vLLM can serve Qwen2-VL / Qwen2.5-VL, and neither touches an
image's pixels:

1. vLLM's ``qwen2_vl.py`` imports ``smart_resize`` from ``image_processing_qwen2_vl`` and its
   ``pixtral.py`` (which ``llava.py`` imports) ``_num_image_tokens`` from
   ``image_processing_pixtral``: the torchvision backend modules, which import torchvision first
   thing. They are served as their PIL backend modules (``image_processing_pil_*``: the same
   functions, line for line). transformers itself already picks those PIL image processors
   (``*ImageProcessorPil``) when torchvision is missing, so the pixels are what this venv would
   compute anyway.
2. ``Qwen2_5_VLProcessor.from_pretrained`` loads a video processor, and every video processor
   needs torchvision. It gets a stand-in that refuses videos (the tests send none).

With torchvision importable, nothing here is installed.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_QWEN = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
# torchvision backend module -> its PIL twin
_ALIASES = {
    _QWEN: "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl",
    "transformers.models.pixtral.image_processing_pixtral": (
        "transformers.models.pixtral.image_processing_pil_pixtral"
    ),
}


def _no_video_processor_class() -> type:
    from transformers.video_processing_utils import VideoProcessorMixin

    class NoVideoProcessor(VideoProcessorMixin):
        """A video processor that refuses videos: there is no torchvision to decode them."""

        merge_size = 2
        temporal_patch_size = 2

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return cls()

        def __call__(self, *args, **kwargs):
            raise RuntimeError("no video processing here: torchvision is not installed")

    return NoVideoProcessor


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _ALIASES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # a new, empty module

    def exec_module(self, module):
        source = importlib.import_module(_ALIASES[module.__name__])
        module.__dict__.update({k: v for k, v in vars(source).items() if not k.startswith("__")})
        if module.__name__ != _QWEN:
            return
        module.NoVideoProcessor = _no_video_processor_class()
        from transformers import processing_utils

        names = processing_utils._LazyAutoProcessorMapping._MAPPING_NAMES
        names["video_processor"] = (_QWEN, "NoVideoProcessor")
        # The class check's "VideoProcessorMixin" is not exported without torchvision either;
        # its base class is.
        processing_utils.MODALITY_TO_BASE_CLASS_MAPPING["video_processor"] = "BaseImageProcessor"


if importlib.util.find_spec("torchvision") is None:
    sys.meta_path.insert(0, _Alias())
