"""Shared evaluator plumbing: run predictions over a source, write JSON to the workdir.

Every host walks the whole evaluation source in the same order (no sharding), so a multi-host
`predict_fn` sees the same batches everywhere; only process 0 writes files.
"""

import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from vrft_jax.data.example import Example
from vrft_jax.data.pipeline import Pipeline

PredictFn = Callable[[list[Example]], list[str]]  # examples (images loaded) -> completion texts


class Evaluator(Protocol):
    name: str

    def run(self, predict_fn: PredictFn) -> Iterator[tuple[str, float]]:
        """Predicts every example and yields (metric name, value) pairs."""
        ...


def predict_all(
    source: Sequence[Example],
    predict_fn: PredictFn,
    *,
    batch_size: int,
    num_workers: int = 2,
    max_bad_fraction: float = 0.01,
) -> tuple[list[Example], list[str], int]:
    """(examples without their decoded images, completions, number of skipped bad images)."""
    pipeline = Pipeline(
        source,
        batch_size=batch_size,
        seed=None,
        num_epochs=1,
        num_workers=num_workers,
        max_bad_fraction=max_bad_fraction,
        process_index=0,
        process_count=1,
    )
    examples, completions = [], []
    for batch in pipeline:
        texts = list(predict_fn(batch))
        if len(texts) != len(batch):
            raise ValueError(f"predict_fn returned {len(texts)} completions for {len(batch)}")
        examples.extend(e.replace(image=None) for e in batch)
        completions.extend(texts)
    return examples, completions, pipeline.bad_images.count


def is_writer() -> bool:
    try:
        import jax

        return jax.process_index() == 0
    except ImportError:  # evaluators also run without jax (tests, offline scoring)
        return True


def write_json(workdir: str, filename: str, value) -> str | None:
    """Writes workdir/eval/<filename> on process 0; returns the path (None elsewhere or no dir)."""
    if not workdir or not is_writer():
        return None
    folder = os.path.join(workdir, "eval")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, filename)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, default=str)
    return path


def prediction_records(examples: Sequence[Example], completions: Sequence[str], **extra) -> list:
    """One JSON-able record per example: ids, the prompt's target, solution and completion."""
    records = []
    for k, (e, c) in enumerate(zip(examples, completions)):
        record = {
            "example_id": e.example_id,
            "image_id": e.image_id,
            "image_path": e.image_path,
            "category": e.category or e.class_name,
            "solution": e.solution,
            "completion": c,
        }
        record.update({key: values[k] for key, values in extra.items()})
        records.append(record)
    return records
