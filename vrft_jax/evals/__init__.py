"""Evaluators: `run(predict_fn)` predicts every held-out example and yields (name, value).

`predict_fn(examples) -> list[str]` maps a batch of `Example`s (images decoded) to completion
texts; the trainer builds it from the sampler with greedy decoding. Each evaluator writes
`<name>_predictions.json` and `<name>_metrics.json` (detection also the COCO `<name>_results.json`)
into its `out_dir`; the trainer passes `<workdir>/eval/<tag>/` (tag: before, after_sft, step_N,
final, eval).
"""

from vrft_jax import box_frames
from vrft_jax.evals.classification import ClassificationEvaluator
from vrft_jax.evals.common import Evaluator, PredictFn, predict_all
from vrft_jax.evals.detection import DetectionEvaluator, evaluate_detections
from vrft_jax.evals.grounding import GroundingEvaluator

__all__ = [
    "ClassificationEvaluator",
    "DetectionEvaluator",
    "Evaluator",
    "GroundingEvaluator",
    "PredictFn",
    "evaluate_detections",
    "make_evaluators",
    "predict_all",
]

_BY_TASK = {
    "detection": DetectionEvaluator,
    "classification": ClassificationEvaluator,
    "grounding": GroundingEvaluator,
}
_SOURCE_TASK = {
    "coco": "detection",
    "lvis": "detection",
    "tfds": "classification",
    "image_folder": "classification",
    "lisa": "grounding",
}


class _Subset:
    """The examples of one task from a mixed source (the synthetic "mixed" task, rows)."""

    def __init__(self, source, indices):
        self.source, self.indices = source, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.source[self.indices[index]]


def make_evaluators(
    config, out_dir: str, *, box_frame=box_frames.RELATIVE, resized_size=None
) -> list:
    """The evaluators for config.data's held-out split, one per task present in it.

    box_frame / resized_size: how the evaluated model writes boxes (its vrft_jax.box_frames frame
    and PromptProcessor.resized_size), for the detection and grounding evaluators."""
    from vrft_jax.data import make_source

    source = make_source(
        config.data, "eval", config.seed, detection_gate=config.eval.detection_gate
    )
    common = dict(
        batch_size=config.eval.batch_size,
        num_workers=config.data.num_workers,
        max_bad_fraction=config.data.max_bad_fraction,
    )
    boxes = dict(box_frame=box_frame, resized_size=resized_size)

    def make(task, task_source):
        extra = boxes if task in ("detection", "grounding") else {}
        return _BY_TASK[task](task_source, out_dir, name=task, **common, **extra)

    task = _SOURCE_TASK.get(config.data.source)
    if task is not None:
        return [make(task, source)]
    # synthetic and rows may mix tasks: split by each example's task (from texts, no images).
    by_task = {}
    task_at = getattr(source, "task_at", None) or (lambda i: source[i].task)
    for i in range(len(source)):
        by_task.setdefault(task_at(i), []).append(i)
    return [make(t, _Subset(source, idx)) for t, idx in sorted(by_task.items())]
