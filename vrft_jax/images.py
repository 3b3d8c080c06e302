"""Images in: decoding files and arrays with clear errors, and the Qwen-VL image processor of each
model family (transformers' PIL processor: resize within min/max pixels, normalise, patchify; no
torch or torchvision).
"""

import os

import numpy as np
import PIL.Image
import transformers

# The image processor each model family was trained with, where no model folder gives one: the
# Qwen2VLImageProcessor class defaults (Qwen2-VL, Qwen2.5-VL), and for Qwen3-VL the settings of
# the published Qwen/Qwen3-VL-*-Instruct preprocessor_config.json (the same class, 16-px patches,
# mean and std 0.5).
IMAGE_PROCESSOR_SETTINGS = {
    "qwen2_vl": dict(patch_size=14, temporal_patch_size=2, merge_size=2),
    "qwen2_5_vl": dict(patch_size=14, temporal_patch_size=2, merge_size=2),
    "qwen3_vl": dict(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ),
}
SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "assets", "qwen2_vl_tokenizer")


class BadImageError(OSError):
    """An image file that is missing, corrupt or not an image; `path` names it."""

    def __init__(self, message, path=None):
        super().__init__(message)
        self.path = path


def load_image(image, name: str = "image") -> PIL.Image.Image:
    """An RGB PIL image from a PIL image, a numpy array or a file path.

    Arrays: uint8 [H, W], [H, W, 3] or [H, W, 4], or floats in [0, 1]. A missing, corrupt or
    truncated file raises BadImageError naming the file (decoding is forced here, not deferred).
    """
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, name)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise BadImageError(f"image file not found: {path}", path)
        try:
            with PIL.Image.open(path) as img:
                return img.convert("RGB")  # convert() decodes every pixel, so truncation shows here
        except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
            raise BadImageError(f"cannot read image file {path}: {e}", path) from e
    raise TypeError(
        f"{name}: expected a PIL image, numpy array or path, got {type(image).__name__}"
    )


def _array_to_pil(array, name):
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"{name}: image array must be [H, W] or [H, W, 1|3|4], got {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(np.round(array * 255.0), 0, 255)
    elif array.dtype != np.uint8:
        raise ValueError(f"{name}: image array must be uint8 or float in [0, 1], got {array.dtype}")
    array = array.astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return PIL.Image.fromarray(array).convert("RGB")


def _smart_resize(height, width, **kwargs):
    """transformers' Qwen2-VL resize rule (the one its image processors call)."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    except ImportError:  # transformers 4.x
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    return smart_resize(height, width, **kwargs)


def processor_file(folder: str, model_type: str) -> str | None:
    """The preprocessor_config.json the image processor of `model_type` is read from, or None when
    the family's IMAGE_PROCESSOR_SETTINGS are used: no such file, or the shipped Qwen2-VL tokenizer
    folder (no model folder given) for another family."""
    file = os.path.join(folder, "preprocessor_config.json")
    shipped = os.path.realpath(folder) == os.path.realpath(SHIPPED_DIR)
    if not os.path.isfile(file) or (shipped and model_type != "qwen2_vl"):
        return None
    return file


def load_image_processor(
    folder: str, *, min_pixels: int, max_pixels: int, model_type: str = "qwen2_vl"
):
    """The Qwen-VL image processor that runs on numpy/PIL only (no torch, no torchvision).

    transformers 5 calls it `Qwen2VLImageProcessorPil`; in transformers 4 the plain
    `Qwen2VLImageProcessor` was the numpy one. Every family uses this class; `model_type` says
    which patch geometry the model needs: a folder's preprocessor_config.json must match it
    (ValueError naming the file and key), and without one (or with the shipped Qwen2-VL tokenizer
    folder for another family) the family's IMAGE_PROCESSOR_SETTINGS are used.
    """
    if model_type not in IMAGE_PROCESSOR_SETTINGS:
        raise ValueError(f"no image processor settings for model_type {model_type!r}")
    settings = IMAGE_PROCESSOR_SETTINGS[model_type]
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as processor_cls,
        )
    except ImportError:  # transformers 4.x
        processor_cls = transformers.Qwen2VLImageProcessor
    kwargs = dict(min_pixels=min_pixels, max_pixels=max_pixels)
    file = processor_file(folder, model_type)
    if file is not None:
        processor = processor_cls.from_pretrained(folder, **kwargs)
        for key in ("patch_size", "temporal_patch_size", "merge_size"):
            got = getattr(processor, key, None)
            if got != settings[key]:
                raise ValueError(
                    f"{file}: {key} is {got}, but the {model_type} model takes {settings[key]} "
                    "(an image processor of another model family?)"
                )
    else:
        processor = processor_cls(**settings, **kwargs)
    size = getattr(processor, "size", {}) or {}
    got = (size.get("shortest_edge", getattr(processor, "min_pixels", None)),)
    got += (size.get("longest_edge", getattr(processor, "max_pixels", None)),)
    if got != (min_pixels, max_pixels):
        raise RuntimeError(f"image processor ignored min/max pixels: wanted {kwargs}, got {got}")
    return processor
