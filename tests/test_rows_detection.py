"""Detection evaluation of `rows` data (the published ViRFT rows: category names in the prompt,
0..1000 boxes in the solution, no annotation file): a real COCO ground truth, a finite mAP."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from vrft_jax.data.rows import Rows
from vrft_jax.evals import DetectionEvaluator


def _problem(category):
    return f"Detect all objects belonging to the category '{category}' in the image."


def _solution(boxes):
    if not boxes:
        return "<answer>No Objects</answer>"
    items = ", ".join(f"{{'Position': {list(b)}, 'Confidence': 1}}" for b in boxes)
    return f"<answer>[{items}]</answer>"


def _answer(boxes_and_scores):
    items = ", ".join(f"{{'Position': {list(b)}, 'Confidence': {s}}}" for b, s in boxes_and_scores)
    return f"<answer>[{items}]</answer>" if items else "<answer>No Objects</answer>"


def _write_rows(tmp_path, rows):
    """rows: (image size (W, H), category, GT boxes in 0..1000) -> a rows JSONL with PNG images."""
    lines = []
    for i, (size, category, boxes) in enumerate(rows):
        pixels = np.full((size[1], size[0], 3), 40 * i, np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        record = {"image": f"{i}.png", "problem": _problem(category), "solution": _solution(boxes)}
        lines.append(json.dumps(record))
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return Rows(str(path), image_root=str(tmp_path))


def test_rows_detection_map_by_hand(tmp_path):
    cat_a, cat_b = (100, 100, 400, 500), (500, 500, 900, 900)
    dog = (100, 200, 800, 900)
    source = _write_rows(
        tmp_path,
        [((200, 100), "cat", [cat_a, cat_b]), ((50, 80), "dog", [dog]), ((64, 64), "cat", [])],
    )
    completions = {
        source[0].example_id: _answer([(cat_a, 0.9)]),  # finds one of the two cats exactly
        source[1].example_id: _answer([(dog, 0.8)]),  # finds the dog exactly
        source[2].example_id: _answer([((10, 10, 500, 500), 0.95)]),  # a cat where there is none
    }
    out = tmp_path / "eval"
    evaluator = DetectionEvaluator(source, str(out), batch_size=2, num_workers=1)
    metrics = dict(evaluator.run(lambda batch: [completions[e.example_id] for e in batch]))
    # Exact boxes: IoU 1 at every threshold, so every threshold gives the same AP.
    # dog: one GT, one true positive -> precision 1 at every recall -> AP 1.
    # cat: detections by score: FP (0.95), TP (0.9); recall reaches 1/2 at precision 1/2, and
    #   COCO interpolates precision as the best at any higher recall: 0.5 on the 51 recall points
    #   0.00..0.50 of 101, 0 beyond -> AP = 0.5 * 51 / 101.
    expected_cat, expected_dog = 0.5 * 51 / 101, 1.0
    assert metrics["detection/ap/cat"] == pytest.approx(expected_cat, abs=1e-12)
    assert metrics["detection/ap/dog"] == pytest.approx(expected_dog, abs=1e-12)
    assert metrics["detection/map"] == pytest.approx((expected_cat + expected_dog) / 2, abs=1e-12)
    assert metrics["detection/map50"] == pytest.approx((expected_cat + expected_dog) / 2, abs=1e-12)
    assert metrics["detection/num_gt_boxes"] == 3.0
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    # The ground truth and results files are a COCO pair pycocotools reads back.
    gt = json.loads((out / "detection_ground_truth.json").read_text())
    assert sorted(c["name"] for c in gt["categories"]) == ["cat", "dog"]
    assert [a["bbox"] for a in gt["annotations"]][2] == pytest.approx([5.0, 16.0, 35.0, 56.0])
    written = json.loads((out / "detection_metrics.json").read_text())
    assert written["map"] == pytest.approx(metrics["detection/map"])


def test_rows_split_without_ground_truth_says_so(tmp_path):
    source = _write_rows(tmp_path, [((32, 32), "cat", []), ((32, 32), "dog", [])])
    out = tmp_path / "eval"
    evaluator = DetectionEvaluator(source, str(out), batch_size=2, num_workers=1)
    metrics = dict(evaluator.run(lambda batch: [_answer([((0, 0, 9, 9), 0.5)]) for _ in batch]))
    assert metrics["detection/num_gt_boxes"] == 0.0
    assert "detection/map" not in metrics  # undefined, so not reported (never NaN)
    assert metrics["detection/num_detections"] == 2.0
    text = (out / "detection_metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["num_gt_boxes"] == 0
