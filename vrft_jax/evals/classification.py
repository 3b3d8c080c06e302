"""Classification accuracy: exact (after normalisation) and the reference's substring matching."""

import re

from vrft_jax.evals.common import predict_all, prediction_records, write_json
from vrft_jax.rewards import parsing

_REFERENCE_ANSWER = re.compile(r"<answer>(.*?)</answer>")  # the reference: no DOTALL


def exact_correct(completion: str, class_name: str) -> bool:
    """The `<answer>` content equals the class name after normalisation (case, spaces, `_`, `-`)."""
    answer = parsing.normalize_label(parsing.extract_answer(completion))
    return bool(answer) and answer == parsing.normalize_label(class_name)


def reference_correct(completion: str, class_name: str) -> bool:
    """The reference eval: answer tag (single line) required, then a substring either way after
    removing spaces and `_` and lowercasing (so an empty answer counts as correct)."""
    match = _REFERENCE_ANSWER.search(completion)
    if match is None:
        return False

    def norm(text):
        return text.replace(" ", "").replace("_", "").lower()

    answer, truth = norm(match.group(1).strip()), norm(class_name)
    return truth in answer or answer in truth


class ClassificationEvaluator:
    def __init__(
        self,
        source,
        out_dir="",
        *,
        name="classification",
        batch_size=16,
        num_workers=2,
        max_bad_fraction=0.01,
    ):
        self.source, self.out_dir, self.name = source, out_dir, name
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_bad_fraction = max_bad_fraction

    def run(self, predict_fn):
        examples, completions, bad = predict_all(
            self.source,
            predict_fn,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            max_bad_fraction=self.max_bad_fraction,
            desc=f"eval {self.name}",
        )
        exact = [exact_correct(c, e.class_name) for e, c in zip(examples, completions)]
        loose = [reference_correct(c, e.class_name) for e, c in zip(examples, completions)]
        records = prediction_records(examples, completions, exact=exact, reference_match=loose)
        write_json(self.out_dir, f"{self.name}_predictions.json", records)
        n = max(len(examples), 1)
        metrics = {
            "accuracy": sum(exact) / n,
            "accuracy_reference": sum(loose) / n,
            "num_examples": float(len(examples)),
            "bad_images": float(bad),
        }
        write_json(self.out_dir, f"{self.name}_metrics.json", metrics)
        for key, value in metrics.items():
            yield f"{self.name}/{key}", value
