"""The built-in demo task: coloured shapes drawn on the fly with PIL.

Every example is a pure function of (seed, split, index): the generator is seeded with all three,
so the same index always gives the same image and the held-out split ("eval") never shares a
generator stream with "train".

- classification: one large shape on a plain background; the answer is its shape name.
- colour (the demo's task): the same draws on a card of the shape's colour, the shape a darker
  shade of it; the answer is the colour (red / green / blue). The colour fills every patch, so
  the patch embedding sees the class in every image token: a tiny random-init model learns to
  read it in a few dozen steps (the shape, and a coloured shape on gray, it does not in 120
  SFT steps: the class-token log-probs stay independent of the image).
- detection: "Detect all objects belonging to the category 'red circle'": 0 to 3 targets plus
  distractors of another colour or shape; boxes in 0..1000 ints, "No Objects" when there are none.
"""

import numpy as np
from PIL import Image, ImageDraw

from vrft_jax.data import templates
from vrft_jax.data.example import (
    Example,
    classification_solution,
    detection_solution,
    from_thousandths,
    to_thousandths,
)

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220)}
BACKGROUND = (235, 235, 235)
SPLIT_CODES = {"train": 0, "eval": 1}
TASKS = ("classification", "colour", "detection", "mixed")  # config.data.synthetic_task
TRAIN_SIZE = 100_000  # virtual length of the train stream (examples are drawn, not stored)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, colour) -> None:
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _free_box(rng, size, side, taken, tries=50):
    """A square box of `side` pixels overlapping no box in `taken` (None if none fits)."""
    for _ in range(tries):
        x1, y1 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        box = (x1, y1, x1 + side - 1, y1 + side - 1)
        if all(box[2] < t[0] or t[2] < box[0] or box[3] < t[1] or t[3] < box[1] for t in taken):
            return box
    return None


class SyntheticShapes:
    """Random-access source of drawn examples.

    task: "classification", "colour", "detection" or "mixed" (classification and detection)."""

    def __init__(
        self, task: str, split: str, seed: int, size: int = 112, length: int | None = None
    ):
        if task not in TASKS:
            raise ValueError(f"config.data.synthetic_task={task!r}: expected one of {TASKS}")
        if split not in SPLIT_CODES:
            raise ValueError(f"synthetic split {split!r}: expected 'train' or 'eval'")
        self.task, self.split, self.seed, self.size = task, split, seed, size
        self.length = TRAIN_SIZE if length is None else length

    def __len__(self) -> int:
        return self.length

    def task_at(self, index: int) -> str:
        if self.task == "mixed":
            return "classification" if index % 2 == 0 else "detection"
        return "classification" if self.task == "colour" else self.task

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
        if self.task_at(index) == "classification":
            return self._classification(rng, index)
        return self._detection(rng, index)

    def _canvas(self, background=BACKGROUND):
        image = Image.new("RGB", (self.size, self.size), background)
        return image, ImageDraw.Draw(image)

    def _classification(self, rng, index) -> Example:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        by_colour = self.task == "colour"
        fill = COLOURS[colour]
        if by_colour:  # card and shape in the colour (shape darker, so it stays visible)
            image, draw = self._canvas(fill)
            fill = tuple(v * 3 // 5 for v in fill)
        else:
            image, draw = self._canvas()
        side = int(rng.integers(self.size // 2, self.size * 7 // 8))
        box = _free_box(rng, self.size, side, [])
        draw_shape(draw, shape, box, fill)
        name = colour if by_colour else shape
        return Example(
            image=image,
            problem=templates.classification_problem("colours" if by_colour else "shapes"),
            task="classification",
            solution=classification_solution(name),
            example_id=f"synthetic-{self.split}-{index}",
            image_id=index,
            image_size=(self.size, self.size),
            class_name=name,
            label=list(COLOURS).index(colour) if by_colour else SHAPES.index(shape),
        )

    def _detection(self, rng, index) -> Example:
        target_shape = SHAPES[int(rng.integers(len(SHAPES)))]
        target_colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        image, draw = self._canvas()
        taken, target_boxes = [], []
        num_targets, num_distractors = int(rng.integers(0, 4)), int(rng.integers(0, 3))
        for k in range(num_targets + num_distractors):
            shape, colour = target_shape, target_colour
            if k >= num_targets:  # a distractor differs in colour, shape, or both
                while (shape, colour) == (target_shape, target_colour):
                    shape = SHAPES[int(rng.integers(len(SHAPES)))]
                    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            side = int(rng.integers(self.size // 6, self.size // 3))
            box = _free_box(rng, self.size, side, taken)
            if box is None:
                continue
            taken.append(box)
            draw_shape(draw, shape, box, COLOURS[colour])
            if k < num_targets:
                # Pixel box covering the drawn pixels: x2/y2 are inclusive, so +1 for the edge.
                target_boxes.append((box[0], box[1], box[2] + 1, box[3] + 1))
        boxes = tuple(to_thousandths(b, self.size, self.size) for b in target_boxes)
        category = f"{target_colour} {target_shape}"
        return Example(
            image=image,
            problem=templates.detection_problem(category),
            task="detection",
            solution=detection_solution(boxes),
            example_id=f"synthetic-{self.split}-{index}",
            image_id=index,
            image_size=(self.size, self.size),
            boxes=boxes,
            pixel_boxes=tuple(from_thousandths(b, self.size, self.size) for b in boxes),
            category=category,
            category_id=SHAPES.index(target_shape) * len(COLOURS)
            + list(COLOURS).index(target_colour),
        )
