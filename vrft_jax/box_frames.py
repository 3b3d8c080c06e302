"""Box frames: the coordinates a model family reads and writes boxes in, and conversions.

Two frames:
  "relative_1000"    x1 y1 x2 y2 scaled to 0..1000 by the image's width and height (Qwen2-VL,
                     Qwen3-VL, and every Visual-RFT solution and data source here).
  "absolute_pixels"  x1 y1 x2 y2 in pixels of the image AS THE PROCESSOR RESIZED IT, i.e. the
                     patch grid the model saw: W = grid_w * patch_size, H = grid_h * patch_size
                     (Qwen2.5-VL).

The ground truth (solutions, `Example.boxes`) is always relative_1000; a model's answer is
converted to it per example, with that example's resized size, before any IoU is taken. So the
rewards and mAP mean the same for every family. IoU is invariant to scaling x and y separately,
so the IoU of two boxes is the same in either frame.

Pure functions, no project imports (rewards, evals, prompts and inputs import this). The box
conversions take numpy or jax.numpy arrays alike (arithmetic and indexing only, jit-able):
boxes [..., 4] and sizes [..., 2] as (W, H), broadcast against each other.
"""

RELATIVE = "relative_1000"
PIXELS = "absolute_pixels"
FRAMES = (RELATIVE, PIXELS)
AUTO = "auto"  # config.model.box_frame: the model family's frame
CONFIG_CHOICES = (AUTO, *FRAMES)  # values config.model.box_frame accepts
RELATIVE_SCALE = 1000.0

# model_type (config.json's, and vrft_jax.models.config's) -> the frame it answers in.
FAMILY_FRAMES = {
    "qwen2_vl": RELATIVE,
    "qwen2_5_vl": PIXELS,  # trained on absolute coordinates of the resized input image
    "qwen3_vl": RELATIVE,  # the model cards: relative coordinates scaled to 0..1000
}
DEFAULT_MODEL_TYPE = "qwen2_vl"


def model_type(model_config) -> str:
    """The family of a model config; configs without a `model_type` field are Qwen2-VL's."""
    return getattr(model_config, "model_type", DEFAULT_MODEL_TYPE)


def resolve(box_frame: str, family: str = DEFAULT_MODEL_TYPE) -> str:
    """The frame a run uses: config.model.box_frame ("auto" = the family's) -> a name in FRAMES.

    Raises ValueError naming config.model.box_frame (or the family) and the accepted values.
    """
    if box_frame == AUTO:
        if family not in FAMILY_FRAMES:
            raise ValueError(
                f"model_type {family!r} has no known box frame (known: "
                f"{', '.join(FAMILY_FRAMES)}); set config.model.box_frame to one of "
                f"{', '.join(FRAMES)}"
            )
        return FAMILY_FRAMES[family]
    check_frame(box_frame, "config.model.box_frame", CONFIG_CHOICES)
    return box_frame


def check_frame(frame, where: str = "box frame", allowed=FRAMES) -> str:
    if frame not in allowed:
        raise ValueError(f"{where}={frame!r}: expected one of {', '.join(allowed)}")
    return frame


def grid_sizes(image_grid_thw, patch_size: int):
    """(W, H) of each image as the processor resized it: image_grid_thw [I, 3] (t, h, w patches)
    -> int [I, 2] = (w * patch_size, h * patch_size)."""
    return image_grid_thw[..., 2:0:-1] * patch_size


def _scale_corners(boxes, factor):
    """boxes [..., 4] with each corner (x, y) multiplied by factor [..., 2] (broadcast)."""
    corners = boxes.reshape(boxes.shape[:-1] + (2, 2)) * factor[..., None, :]
    return corners.reshape(corners.shape[:-2] + (4,))


def to_relative(boxes, frame: str, sizes=None):
    """Boxes [..., 4] written in `frame` -> the same boxes in 0..1000 (floats, not clipped).

    sizes [..., 2]: (W, H) of the resized image, needed for "absolute_pixels" (ignored else).
    """
    check_frame(frame)
    if frame == RELATIVE:
        return boxes * 1.0
    if sizes is None:
        raise ValueError("absolute_pixels boxes need the resized image size (W, H)")
    return _scale_corners(boxes, RELATIVE_SCALE / (sizes * 1.0))


def from_relative(boxes, frame: str, sizes=None):
    """0..1000 boxes [..., 4] -> the same boxes written in `frame` (floats, not rounded)."""
    check_frame(frame)
    if frame == RELATIVE:
        return boxes * 1.0
    if sizes is None:
        raise ValueError("absolute_pixels boxes need the resized image size (W, H)")
    return _scale_corners(boxes, sizes / RELATIVE_SCALE)
