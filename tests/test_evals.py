"""Evaluators: COCO/LVIS mAP against pycocotools and hand computations, accuracy, grounding IoU."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
from coco_fixture import make_coco, make_lvis

from configs import base
from vrft_jax.data import DataError
from vrft_jax.data.coco import CocoDetection
from vrft_jax.data.example import Example, detection_solution
from vrft_jax.data.synthetic import SyntheticShapes
from vrft_jax.evals import (
    ClassificationEvaluator,
    DetectionEvaluator,
    GroundingEvaluator,
    evaluate_detections,
    make_evaluators,
)
from vrft_jax.evals import detection as detection_eval


def _oracle(examples, confidence=0.9):
    """Completions that answer each example's ground-truth boxes."""
    out = []
    for e in examples:
        items = ", ".join(f"{{'Position': {list(b)}, 'Confidence': {confidence}}}" for b in e.boxes)
        answer = f"[{items}]" if e.boxes else "No Objects"
        out.append(f"<think>look</think> <answer>{answer}</answer>")
    return out


def _examples(source):
    return [source[i] for i in range(len(source))]


def test_ground_truth_gives_map_one_and_empty_gives_zero(tmp_path):
    ann, root = make_coco(tmp_path)
    source = CocoDetection(ann, root, mode="eval")
    examples = _examples(source)
    perfect = evaluate_detections(examples, _oracle(examples), annotation_file=ann)
    assert perfect["map"] == pytest.approx(1.0) and perfect["map50"] == pytest.approx(1.0)
    assert perfect["ap/cat"] == pytest.approx(1.0) and perfect["coco_AP"] == pytest.approx(1.0)
    empty = evaluate_detections(examples, ["<answer>No Objects</answer>"] * len(examples),
                                annotation_file=ann)  # fmt: skip
    assert empty["map"] == 0.0 and empty["map50"] == 0.0 and empty["coco_AP"] == 0.0


def test_hand_computed_ap(tmp_path):
    """One image 1000x1000, two GT boxes. A: exact (score .9); B: IoU 0.62 with GT2 (score .8).

    IoU thresholds .50/.55/.60 match both -> AP 1. The 7 higher ones match only A: precision 1 up
    to recall .5, recall never reaches 1, so 51 of the 101 recall points have precision 1.
    """
    gt = {
        "images": [{"id": 7, "width": 1000, "height": 1000}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [500, 500, 200, 200],
             "area": 40000, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 100, 100],
             "area": 10000, "iscrowd": 0},
        ],
    }  # fmt: skip
    example = Example(image=None, problem="", task="detection", solution="", image_id=7,
                      image_size=(1000, 1000), category_id=1, category="thing")  # fmt: skip
    completion = (
        "<answer>[{'Position': [500, 500, 700, 700], 'Confidence': 0.9}, "
        "{'Position': [0, 0, 100, 62], 'Confidence': 0.8}]</answer>"
    )
    metrics = evaluate_detections([example], [completion], gt_dataset=gt)
    expected = (3 * 1.0 + 7 * 51 / 101) / 10
    assert metrics["map"] == pytest.approx(expected, abs=1e-9)
    assert metrics["map50"] == pytest.approx(1.0)


def test_summary_equals_pycocotools_own(tmp_path):
    """Random predictions written as COCO results JSON, scored by pycocotools directly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann, root = make_coco(tmp_path)
    source = CocoDetection(ann, root, mode="eval", gate="all")
    examples = _examples(source)
    rng = np.random.default_rng(0)
    completions = []
    for e in examples:  # jittered GT boxes plus random false positives
        items = []
        for b in list(e.boxes) + [(100, 100, 400, 500)] * int(rng.integers(0, 2)):
            jitter = np.clip(np.asarray(b) + rng.integers(-60, 60, 4), 0, 1000)
            x1, x2 = sorted(jitter[[0, 2]].tolist())
            y1, y2 = sorted(jitter[[1, 3]].tolist())
            items.append(f"{{'Position': [{x1}, {y1}, {x2}, {y2}], "
                         f"'Confidence': {rng.uniform():.2f}}}")  # fmt: skip
        completions.append(f"<answer>[{', '.join(items)}]</answer>")
    evaluator = DetectionEvaluator(source, str(tmp_path / "work"), batch_size=4)
    lookup = dict(zip([e.example_id for e in examples], completions))
    metrics = dict(evaluator.run(lambda batch: [lookup[e.example_id] for e in batch]))

    results_file = tmp_path / "work" / "detection_results.json"
    assert results_file.exists() and (tmp_path / "work/detection_predictions.json").exists()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann)
        reference = COCOeval(gt, gt.loadRes(str(results_file)), iouType="bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    for name, value in zip(names, reference.stats):
        assert metrics[f"detection/coco_{name}"] == pytest.approx(value)
    assert 0.05 < metrics["detection/map"] < 0.95  # a non-trivial case
    # every category has GT, so the mean of per-category AP is the summary's AP
    assert metrics["detection/map"] == pytest.approx(reference.stats[0])
    assert metrics["detection/bad_images"] == 0.0
    assert metrics["detection/num_examples"] == len(examples)


def test_lvis_federated_and_fallback(tmp_path, monkeypatch):
    ann, root = make_lvis(tmp_path)
    source = CocoDetection(ann, root, mode="eval", categories=("lvis_rare",))
    examples = _examples(source)
    if detection_eval.lvis_available():
        perfect = evaluate_detections(examples, _oracle(examples), annotation_file=ann, lvis=True)
        assert perfect["lvis_federated"] == 1.0 and perfect["map"] == pytest.approx(1.0)
        assert perfect["map_reference"] == pytest.approx(1.0)  # all-area-range average as well
        empty = evaluate_detections(examples, [""] * len(examples), annotation_file=ann, lvis=True)
        assert empty["map"] == 0.0
    monkeypatch.setattr(detection_eval, "lvis_available", lambda: False)
    fallback = evaluate_detections(examples, _oracle(examples), annotation_file=ann, lvis=True)
    assert fallback["lvis_federated"] == 0.0 and fallback["map"] == pytest.approx(1.0)


def test_synthetic_detection_evaluator_end_to_end(tmp_path):
    source = SyntheticShapes("detection", "eval", seed=1, size=64, length=24)
    evaluator = DetectionEvaluator(source, str(tmp_path), batch_size=8)
    metrics = dict(evaluator.run(_oracle))
    assert metrics["detection/map"] == pytest.approx(1.0)
    with open(tmp_path / "detection_metrics.json") as f:
        assert json.load(f)["map"] == pytest.approx(1.0)
    # shifted boxes (IoU well under 0.5) score 0
    shifted = dict(evaluator.run(lambda b: [c.replace("'Position': [", "'Position': [9")
                                            for c in _oracle(b)]))  # fmt: skip
    assert shifted["detection/map"] < 0.05


def test_classification_exact_and_reference_matching(tmp_path):
    source = SyntheticShapes("classification", "eval", seed=2, size=32, length=6)
    names = [source[i].class_name for i in range(6)]
    answers = {
        0: f"<think>x</think><answer>{names[0]}</answer>",  # right: both count it
        1: f"<answer>{names[1].upper()} </answer>",  # right after normalisation
        2: "<answer></answer>",  # empty: only the reference's substring match counts it
        3: f"<answer>a {names[3]} or a blob</answer>",  # several classes: reference only
        4: f"<think>{names[4]}</think> no answer tag",  # no tag: wrong for both
        5: "<answer>hexagon</answer>",  # wrong
    }
    order = iter(range(6))
    evaluator = ClassificationEvaluator(source, str(tmp_path), batch_size=4)
    metrics = dict(evaluator.run(lambda batch: [answers[next(order)] for _ in batch]))
    assert metrics["classification/accuracy"] == pytest.approx(2 / 6)
    assert metrics["classification/accuracy_reference"] == pytest.approx(4 / 6)
    records = json.load(open(tmp_path / "classification_predictions.json"))
    assert [r["exact"] for r in records] == [True, True, False, False, False, False]
    written = json.load(open(tmp_path / "classification_metrics.json"))
    assert written["accuracy"] == pytest.approx(2 / 6)


def test_grounding_miou_and_accuracy(tmp_path):
    truth = (100, 100, 500, 500)
    examples = [
        Example(image=np.zeros((8, 8, 3), np.uint8), problem="p", task="grounding",
                solution="", example_id=str(k), boxes=(truth,))
        for k in range(4)
    ]  # fmt: skip
    completions = [
        "<answer>(100,100),(500,500)</answer>",  # IoU 1
        "<answer>(100,100),(500,300)</answer>",  # IoU 0.5 (counts at >= 0.5)
        "<answer>[300, 100, 700, 500]</answer>",  # IoU 1/3
        "<answer>somewhere</answer>",  # unreadable: 0
    ]
    evaluator = GroundingEvaluator(examples, str(tmp_path), batch_size=3)
    metrics = dict(evaluator.run(lambda batch: [completions[int(e.example_id)] for e in batch]))
    assert metrics["grounding/miou"] == pytest.approx((1 + 0.5 + 1 / 3) / 4)
    assert metrics["grounding/accuracy_iou50"] == pytest.approx(0.5)


def test_make_evaluators_for_the_demo_and_coco(tmp_path):
    config = base.get_config()
    config.data.synthetic_size, config.data.num_eval_examples = 32, 6
    evaluators = make_evaluators(config, str(tmp_path))
    assert [e.name for e in evaluators] == ["classification", "detection"]
    assert [len(e.source) for e in evaluators] == [3, 3]
    ann, root = make_coco(tmp_path)
    config.data.update(source="coco", path=ann, image_root=root, categories=("coco_fewshot8",))
    with pytest.raises(DataError, match="train"):  # the paper's 8 names are not in the fixture
        make_evaluators(config, str(tmp_path))
    config.data.categories = ("cat", "dog")
    (evaluator,) = make_evaluators(config, str(tmp_path))
    assert evaluator.annotation_file == ann and evaluator.category_ids == [1, 2]
    solution_of = {e.example_id: e for e in _examples(evaluator.source)}
    metrics = dict(evaluator.run(lambda b: _oracle([solution_of[e.example_id] for e in b])))
    assert metrics["detection/map"] == pytest.approx(1.0)
    assert os.path.exists(tmp_path / "detection_results.json")


def test_solution_format_round_trip():
    assert detection_solution([]) == "<answer>No Objects</answer>"
    text = detection_solution([(64, 0, 950, 411)])
    assert text == "<answer>[{'Position': [64, 0, 950, 411], 'Confidence': 1}]</answer>"


def test_predict_fn_through_the_prompt_processor(tokenizer_dir):
    """Prompts encode through the shipped tokenizer; a fake generator returns the solutions."""
    from vrft_jax.evals.predict import make_predict_fn
    from vrft_jax.inputs import PromptProcessor

    processor = PromptProcessor(tokenizer_dir, min_pixels=3136, max_pixels=3136 * 4)
    source = SyntheticShapes("mixed", "eval", seed=0, size=56, length=4)
    shapes = []

    def fake_generate(input_ids, attention_mask, pixel_values, image_grid_thw):
        shapes.append((input_ids.shape, pixel_values.shape, image_grid_thw.shape))
        texts = [f"<think>ok</think> <answer>{answers.pop(0)}</answer>" for _ in input_ids]
        ids = [processor.tokenizer.encode(t) + [processor.special.im_end] for t in texts]
        width = max(map(len, ids))
        tokens = np.full((len(ids), width), processor.special.pad, np.int32)
        mask = np.zeros_like(tokens)
        for i, row in enumerate(ids):
            tokens[i, : len(row)], mask[i, : len(row)] = row, 1
        return tokens, mask

    view = _TaskView(source, "classification")
    answers = [parsing_answer(e.solution) for e in view.items]
    evaluator = ClassificationEvaluator(view, batch_size=2)
    metrics = dict(evaluator.run(make_predict_fn(processor, fake_generate)))
    assert metrics["classification/accuracy"] == 1.0
    assert shapes and shapes[0][0][0] == 2 and shapes[0][1][1] == 1176


def parsing_answer(solution):
    from vrft_jax.rewards import parsing

    return parsing.solution_answer(solution)


class _TaskView:
    def __init__(self, source, task):
        self.items = [source[i] for i in range(len(source)) if source[i].task == task]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]
