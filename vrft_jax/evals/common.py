"""Shared evaluator plumbing: run predictions over a source, write JSON to the workdir.

Every host walks the whole evaluation source in the same order (no sharding), so a multi-host
`predict_fn` sees the same batches everywhere; only process 0 writes files.
"""

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from tqdm import tqdm

from vrft_jax import box_frames, jsonio
from vrft_jax.data.example import Example
from vrft_jax.data.pipeline import Pipeline

PredictFn = Callable[[list[Example]], list[str]]  # examples (images loaded) -> completion texts
# (W, H) of an image -> (W, H) as the model sees it (PromptProcessor.resized_size).
ResizeFn = Callable[[int, int], tuple[int, int]]


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
    desc: str = "eval",
) -> tuple[list[Example], list[str], int]:
    """(examples without their decoded images, completions, number of skipped bad images).
    A progress bar named `desc` counts the examples."""
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
    with tqdm(total=len(source), desc=desc, unit="ex", disable=not is_writer()) as bar:
        for batch in pipeline:
            texts = list(predict_fn(batch))
            if len(texts) != len(batch):
                raise ValueError(f"predict_fn returned {len(texts)} completions for {len(batch)}")
            examples.extend(e.replace(image=None) for e in batch)
            completions.extend(texts)
            bar.update(len(batch))
    return examples, completions, pipeline.bad_images.count


def answer_size(example: Example, box_frame: str, resized_size: ResizeFn | None):
    """The (W, H) an answer in `box_frame` is relative to: None for 0..1000 answers; for pixel
    answers the example's image as resized for the model (needs its decoded `image_size`)."""
    box_frames.check_frame(box_frame)
    if box_frame == box_frames.RELATIVE:
        return None
    if resized_size is None:
        raise ValueError(f"{box_frame} answers need resized_size (PromptProcessor.resized_size)")
    if example.image_size is None:
        raise ValueError(f"example {example.example_id!r}: image size unknown (image not decoded)")
    return resized_size(*example.image_size)


def is_writer() -> bool:
    try:
        import jax

        return jax.process_index() == 0
    except ImportError:  # evaluators also run without jax (tests, offline scoring)
        return True


def write_json(out_dir: str, filename: str, value) -> str | None:
    """Writes out_dir/<filename> (strict JSON: NaN as null, named in a "nonfinite" field) on
    process 0; returns the path (None elsewhere or without an out_dir)."""
    if not out_dir or not is_writer():
        return None
    os.makedirs(out_dir, exist_ok=True)
    return jsonio.write_json(os.path.join(out_dir, filename), value)


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
