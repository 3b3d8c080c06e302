"""Grounding (LISA): mean box IoU and accuracy at IoU >= 0.5, in 0..1000 coordinates.

A pixel-frame answer (Qwen2.5-VL, `box_frame`) is converted to 0..1000 first with the example's
image size as resized for the model (`resized_size`).
The predicted box is the first `(x1,y1),(x2,y2)` (or `[x1, y1, x2, y2]`) inside `<answer>`;
the reference eval searched the whole text, so a completion without the tag is also searched.
An unreadable answer counts as IoU 0. IoU is invariant to scaling x and y separately, so 0..1000
boxes give the pixel IoU (up to the integer rounding of the ground truth).
"""

from vrft_jax import box_frames
from vrft_jax.evals.common import answer_size, predict_all, prediction_records, write_json
from vrft_jax.rewards import parsing


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def predicted_box(completion: str, box_frame=box_frames.RELATIVE, size=None):
    """The first box of a completion as 0..1000 floats [x1, y1, x2, y2], or None."""
    answer = parsing.extract_answer(completion)
    text = answer if answer is not None else completion
    parsed = parsing.parse_grounding_answer(text, frame=box_frame, size=size)
    return [float(v) for v in parsed.boxes[0]] if parsed.valid and len(parsed.boxes) else None


class GroundingEvaluator:
    def __init__(
        self,
        source,
        out_dir="",
        *,
        name="grounding",
        batch_size=16,
        num_workers=2,
        max_bad_fraction=0.01,
        threshold=0.5,
        box_frame=box_frames.RELATIVE,
        resized_size=None,
    ):
        self.source, self.out_dir, self.name = source, out_dir, name
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_bad_fraction, self.threshold = max_bad_fraction, threshold
        self.box_frame, self.resized_size = box_frame, resized_size

    def run(self, predict_fn):
        examples, completions, bad = predict_all(
            self.source,
            predict_fn,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            max_bad_fraction=self.max_bad_fraction,
            desc=f"eval {self.name}",
        )
        boxes = [
            predicted_box(c, self.box_frame, answer_size(e, self.box_frame, self.resized_size))
            for e, c in zip(examples, completions)
        ]
        ious = [box_iou(b, e.boxes[0]) if b else 0.0 for b, e in zip(boxes, examples)]
        records = prediction_records(examples, completions, predicted_box=boxes, iou=ious)
        write_json(self.out_dir, f"{self.name}_predictions.json", records)
        n = max(len(examples), 1)
        metrics = {
            "miou": sum(ious) / n,
            "accuracy_iou50": sum(i >= self.threshold for i in ious) / n,
            "num_examples": float(len(examples)),
            "bad_images": float(bad),
        }
        write_json(self.out_dir, f"{self.name}_metrics.json", metrics)
        for key, value in metrics.items():
            yield f"{self.name}/{key}", value
