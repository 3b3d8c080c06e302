"""The `Example` record every source yields, and the small helpers sources share.

Boxes come in two forms: `boxes` are the reference's 0..1000 integers `[x1, y1, x2, y2]` (what the
model reads and writes), `pixel_boxes` are `[x1, y1, x2, y2]` floats in image pixels (what COCO
evaluation needs).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

TASKS = ("detection", "classification", "grounding")


class DataError(RuntimeError):
    """A data source or pipeline cannot go on (bad file, bad field, too many bad images)."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt with its image and ground truth.

    image: a PIL image, a file path, encoded bytes, an HWC uint8 array, or a zero-argument callable
      returning one of these (the pipeline's `load_image` turns any of them into an RGB PIL image).
    problem: the full user text (the reference's `problem` field, template included).
    task: "detection", "classification" or "grounding".
    solution: the reference's solution string, e.g. `<answer>daisy</answer>`.
    """

    image: Any
    problem: str
    task: str
    solution: str
    example_id: str = ""  # unique within its source, written next to predictions
    image_id: int | str = -1  # COCO/LVIS image id, else a file name or index
    image_path: str = ""  # where the image came from, for logs of bad images
    image_size: tuple[int, int] | None = None  # (W, H) in pixels when known before decoding
    boxes: tuple[tuple[int, int, int, int], ...] = ()  # 0..1000 ints (detection, grounding)
    pixel_boxes: tuple[tuple[float, float, float, float], ...] = ()  # pixels, x1 y1 x2 y2
    category: str = ""  # detection category name as prompted
    category_id: int = -1  # detection category id in the annotation file
    class_name: str = ""  # classification answer
    label: int = -1  # classification label index

    def replace(self, **changes) -> "Example":
        return dataclasses.replace(self, **changes)


def to_thousandths(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box x1 y1 x2 y2 -> 0..1000 ints, truncated like the reference's `int(x / W * 1000)`."""
    x1, y1, x2, y2 = box
    scaled = (x1 / width, y1 / height, x2 / width, y2 / height)
    return tuple(int(min(max(v, 0.0), 1.0) * 1000) for v in scaled)


def from_thousandths(box: Sequence[float], width: int, height: int) -> tuple[float, ...]:
    """0..1000 box x1 y1 x2 y2 -> pixel box x1 y1 x2 y2."""
    x1, y1, x2, y2 = box
    return (x1 / 1000 * width, y1 / 1000 * height, x2 / 1000 * width, y2 / 1000 * height)


def detection_solution(boxes: Sequence[Sequence[int]]) -> str:
    """The reference's detection solution: a list of dicts with GT confidence 1, or No Objects."""
    if not boxes:
        return "<answer>No Objects</answer>"
    items = ", ".join(
        f"{{'Position': [{', '.join(str(int(v)) for v in b)}], 'Confidence': 1}}" for b in boxes
    )
    return f"<answer>[{items}]</answer>"


def grounding_solution(box: Sequence[int]) -> str:
    """The reference's LISA solution `<answer> (x1,y1),(x2,y2) </answer>` (spaces as in gen_sft)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return f"<answer> ({x1},{y1}),({x2},{y2}) </answer>"


def classification_solution(name: str) -> str:
    return f"<answer>{name}</answer>"


def k_shot(keys: Sequence[Any], groups: Sequence[Any], shots: int, seed: int) -> list[int]:
    """Indices of `shots` items per group, in a fixed order for a given seed.

    keys: a sortable id per item (image id, file name), so the result does not depend on the order
    the items were listed in. Each group's items are sorted by key and permuted with a generator
    seeded by (seed, group position), so a K-shot subset is a prefix of the 2K-shot one. A group
    with fewer than `shots` items keeps all of them. shots <= 0 keeps everything.
    """
    order = sorted(range(len(keys)), key=lambda i: (str(groups[i]), str(keys[i])))
    if shots <= 0:
        return order
    by_group: dict[Any, list[int]] = {}
    for i in order:
        by_group.setdefault(groups[i], []).append(i)
    chosen = []
    for position, group in enumerate(sorted(by_group, key=str)):
        members = by_group[group]
        rng = np.random.default_rng([seed, position])
        picks = rng.permutation(len(members))[:shots]
        chosen.extend(members[p] for p in picks)
    return chosen
