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
        workdir="",
        *,
        name="classification",
        batch_size=16,
        num_workers=2,
        max_bad_fraction=0.01,
    ):
        self.source, self.workdir, self.name = source, workdir, name
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_bad_fraction = max_bad_fraction

    def run(self, predict_fn):
        examples, completions, bad = predict_all(
            self.source,
            predict_fn,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            max_bad_fraction=self.max_bad_fraction,
        )
        exact = [exact_correct(c, e.class_name) for e, c in zip(examples, completions)]
        loose = [reference_correct(c, e.class_name) for e, c in zip(examples, completions)]
        records = prediction_records(examples, completions, exact=exact, reference_match=loose)
        write_json(self.workdir, f"{self.name}_predictions.json", records)
        n = max(len(examples), 1)
        yield f"{self.name}/accuracy", sum(exact) / n
        yield f"{self.name}/accuracy_reference", sum(loose) / n
        yield f"{self.name}/num_examples", float(len(examples))
        yield f"{self.name}/bad_images", float(bad)
