"""Detection mAP: completions -> COCO results JSON -> pycocotools COCOeval (or LVIS federated eval).

The paper's number is the mean over the chosen categories of each category's AP (precision
averaged over the 10 IoU thresholds x 101 recall points, area "all", 100 detections), reported
here as `map` (a fraction; the paper prints percent). `map50` is the same at IoU 0.5. The standard
COCOeval summary over the same images and categories comes with it (`coco_AP`, `coco_AP50`, ...).

Boxes: the model answers x1 y1 x2 y2 in its frame (`box_frame`: 0..1000, or Qwen2.5-VL's pixels of
the resized image, first converted to 0..1000 with that image's resized size, `resized_size`);
results are pixel xywh of the original image (W, H): x = X1/1000*W, y = Y1/1000*H,
w = (X2-X1)/1000*W, h = (Y2-Y1)/1000*H; score = the confidence. Unreadable answers and
"No Objects" produce no detections.

Sources without an annotation file (the published ViRFT rows: a category name in the prompt and
0..1000 boxes in the solution) get a ground truth built from the examples (`with_coco_ids`,
`gt_from_examples`). A split without any ground-truth box has no mAP: it reports
`num_gt_boxes` 0 and no `map` (never NaN).
"""

import contextlib
import io
import json
import logging

import numpy as np

from vrft_jax import box_frames
from vrft_jax.data.example import from_thousandths
from vrft_jax.evals.common import answer_size, predict_all, prediction_records, write_json
from vrft_jax.rewards import parsing

log = logging.getLogger(__name__)
COCO_SUMMARY = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


def predicted_boxes(completion: str, box_frame=box_frames.RELATIVE, size=None):
    """(boxes [K, 4] in 0..1000, confidences [K]) from a completion written in `box_frame` (with
    `size`, the resized (W, H), for pixel answers); empty when unreadable."""
    answer = parsing.extract_answer(completion)
    parsed = parsing.parse_detection_answer(answer, frame=box_frame, size=size)
    if not parsed.valid:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    return parsed.boxes, parsed.conf


def coco_results(
    examples, completions, *, box_frame=box_frames.RELATIVE, resized_size=None
) -> list[dict]:
    """COCO results records (pixel xywh of the original image) for every predicted box of every
    example. box_frame: the frame the completions are written in; resized_size: (W, H) -> (W, H)
    as the model saw the image (PromptProcessor.resized_size), for pixel answers."""
    results = []
    for example, completion in zip(examples, completions):
        width, height = example.image_size
        size = answer_size(example, box_frame, resized_size)
        boxes, confs = predicted_boxes(completion, box_frame, size)
        for (x1, y1, x2, y2), score in zip(boxes.tolist(), confs.tolist()):
            results.append(
                {
                    "image_id": example.image_id,
                    "category_id": example.category_id,
                    "bbox": [
                        x1 / 1000 * width,
                        y1 / 1000 * height,
                        (x2 - x1) / 1000 * width,
                        (y2 - y1) / 1000 * height,
                    ],
                    "score": score,
                }
            )
    return results


def with_coco_ids(examples) -> list:
    """Examples with the COCO fields an annotation-file-free source lacks (the rows source sets
    category_id -1 and no pixel boxes): category ids 1.. by sorted category name, integer image
    ids 1.. in order of first appearance (one id per distinct `image_id`), and pixel boxes from
    the 0..1000 boxes and each image's (W, H). Examples that have ids already come back as they
    are. Needs `image_size` (filled when the image is decoded, i.e. after predict_all)."""
    examples = list(examples)
    if all(e.category_id != -1 for e in examples):
        return examples
    category_ids = {name: k + 1 for k, name in enumerate(sorted({e.category for e in examples}))}
    image_ids: dict = {}
    out = []
    for e in examples:
        if e.image_size is None:
            raise ValueError(f"example {e.example_id!r}: image size unknown (image not decoded)")
        width, height = e.image_size
        pixel = e.pixel_boxes or tuple(from_thousandths(b, width, height) for b in e.boxes)
        image_id = image_ids.setdefault(e.image_id, len(image_ids) + 1)
        out.append(
            e.replace(category_id=category_ids[e.category], image_id=image_id, pixel_boxes=pixel)
        )
    return out


def gt_from_examples(examples) -> dict:
    """A COCO-format ground truth built from the examples' pixel boxes (sources without a file)."""
    images, categories, annotations = {}, {}, []
    for e in examples:
        images[e.image_id] = {"id": e.image_id, "width": e.image_size[0], "height": e.image_size[1]}
        categories[e.category_id] = {"id": e.category_id, "name": e.category}
        for x1, y1, x2, y2 in e.pixel_boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": e.image_id,
                    "category_id": e.category_id,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return {
        "images": list(images.values()),
        "categories": sorted(categories.values(), key=lambda c: c["id"]),
        "annotations": annotations,
    }


def _per_category(precision, category_names):
    """AP per category from a precision array [T, R, K, ...] (-1 = undefined), NaN if no GT."""
    out = {}
    for k, name in enumerate(category_names):
        values = precision[:, :, k]
        values = values[values > -1]
        out[name] = float(values.mean()) if values.size else float("nan")
    return out


def _mean(values):
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def coco_metrics(gt_dataset: dict, results: list[dict], image_ids, category_ids) -> dict:
    """COCOeval bbox over the given images and categories: per-category AP, map, map50, summary."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {**gt_dataset, "annotations": [dict(a) for a in gt_dataset["annotations"]]}
    for ann in gt.dataset["annotations"]:
        ann.setdefault("iscrowd", 0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if results:
            dt = gt.loadRes([dict(r) for r in results])
        else:  # loadRes cannot take an empty list; an empty result set scores 0 everywhere
            dt = COCO()
            dt.dataset = {
                "images": gt.dataset["images"],
                "categories": gt.dataset["categories"],
                "annotations": [],
            }
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.params.catIds = list(category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    names = [gt.cats[c]["name"] for c in category_ids]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [T, R, K] area all, 100 dets
    per_category = _per_category(precision, names)
    per_category50 = _per_category(precision[:1], names)
    metrics = {"map": _mean(per_category.values()), "map50": _mean(per_category50.values())}
    metrics.update({f"ap/{n}": v for n, v in per_category.items()})
    metrics.update({f"coco_{k}": float(v) for k, v in zip(COCO_SUMMARY, evaluator.stats)})
    return metrics


def lvis_metrics(annotation_file: str, results: list[dict], image_ids, category_ids) -> dict:
    """The `lvis` package's federated evaluation; per-category AP over area "all" (`map`) and,
    as the reference notebook did, averaged over all four area ranges (`map_reference`)."""
    from lvis import LVIS, LVISEval, LVISResults

    shimmed = not hasattr(np, "float")
    if shimmed:  # lvis 0.5.3 still uses np.float, removed in NumPy 1.24
        np.float = float
    try:
        gt = LVIS(annotation_file)
        if not results:  # LVISResults cannot take an empty list: one zero-area det scores 0 too
            first = gt.get_img_ids()[0]
            results = [
                {
                    "image_id": first,
                    "category_id": category_ids[0],
                    "bbox": [0.0, 0.0, 0.0, 0.0],
                    "score": 0.0,
                }
            ]
        dt = LVISResults(gt, [dict(r) for r in results], max_dets=300)
        evaluator = LVISEval(gt, dt, "bbox")
        evaluator.params.img_ids = sorted(image_ids)
        evaluator.params.cat_ids = list(category_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.run()
    finally:
        if shimmed:
            del np.float
    names = [gt.cats[c]["name"] for c in category_ids]
    precision = evaluator.eval["precision"]  # [T, R, K, A]
    per_category = _per_category(precision[..., 0], names)
    metrics = {
        "map": _mean(per_category.values()),
        "map50": _mean(_per_category(precision[:1, :, :, 0], names).values()),
        "map_reference": _mean(_per_category(precision, names).values()),
    }
    metrics.update({f"ap/{n}": v for n, v in per_category.items()})
    metrics.update({f"lvis_{k}": float(v) for k, v in evaluator.results.items()})
    return metrics


def lvis_available() -> bool:
    try:
        import lvis  # noqa: F401
    except ImportError:
        return False
    return True


def evaluate_detections(
    examples,
    completions,
    *,
    gt_dataset=None,
    annotation_file="",
    category_ids=None,
    lvis=False,
    box_frame=box_frames.RELATIVE,
    resized_size=None,
) -> dict:
    """Metrics for completions of detection examples (no model needed).

    gt_dataset: a COCO-format dict; default: read annotation_file, or built from the examples.
    category_ids: the categories averaged (default: those of the examples).
    lvis: use the `lvis` package's federated evaluation (needs annotation_file); without the
      package, pycocotools runs on the LVIS JSON (not federated) and `lvis_federated` is 0.
    box_frame, resized_size: how the completions write boxes (`coco_results`).
    """
    if gt_dataset is None and not annotation_file:
        examples = with_coco_ids(examples)
    frame = dict(box_frame=box_frame, resized_size=resized_size)
    results = coco_results(examples, completions, **frame)
    image_ids = sorted({e.image_id for e in examples})
    if category_ids is None:
        category_ids = sorted({e.category_id for e in examples})
    if lvis and annotation_file and lvis_available():
        metrics = lvis_metrics(annotation_file, results, image_ids, category_ids)
        return {**metrics, "lvis_federated": 1.0}
    if lvis:
        log.warning("`lvis` not installed: LVIS scored with pycocotools (not federated)")
    if gt_dataset is None and annotation_file:
        with open(annotation_file, encoding="utf-8") as f:
            gt_dataset = json.load(f)
    if gt_dataset is None:
        gt_dataset = gt_from_examples(examples)
    num_gt = count_gt_boxes(gt_dataset, image_ids, category_ids)
    if num_gt == 0:
        log.warning("detection split has no ground-truth boxes: no mAP (num_gt_boxes = 0)")
        metrics = {"num_gt_boxes": 0.0, "num_detections": float(len(results))}
    else:
        metrics = coco_metrics(gt_dataset, results, image_ids, category_ids)
        metrics["num_gt_boxes"] = float(num_gt)
    return {**metrics, "lvis_federated": 0.0} if lvis else metrics


def count_gt_boxes(gt_dataset: dict, image_ids, category_ids) -> int:
    """Non-crowd ground-truth boxes of the evaluated images and categories."""
    images, categories = set(image_ids), set(category_ids)
    return sum(
        1
        for a in gt_dataset["annotations"]
        if a["image_id"] in images and a["category_id"] in categories and not a.get("iscrowd", 0)
    )


class DetectionEvaluator:
    """Evaluates a detection source (COCO/LVIS sources carry their annotation file)."""

    def __init__(
        self,
        source,
        out_dir="",
        *,
        name="detection",
        batch_size=16,
        num_workers=2,
        max_bad_fraction=0.01,
        annotation_file=None,
        category_ids=None,
        lvis=None,
        box_frame=box_frames.RELATIVE,
        resized_size=None,
    ):
        self.source, self.out_dir, self.name = source, out_dir, name
        self.frame = dict(box_frame=box_frame, resized_size=resized_size)  # how answers write boxes
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_bad_fraction = max_bad_fraction
        self.annotation_file = annotation_file or getattr(source, "annotation_file", "")
        self.category_ids = category_ids or getattr(source, "category_ids", None)
        self.lvis = getattr(source, "lvis", False) if lvis is None else lvis

    def run(self, predict_fn):
        examples, completions, bad = predict_all(
            self.source,
            predict_fn,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            max_bad_fraction=self.max_bad_fraction,
            desc=f"eval {self.name}",
        )
        gt_dataset = None
        coco = getattr(self.source, "coco", None)
        if coco is not None and not self.lvis:
            gt_dataset = coco.dataset
        if gt_dataset is None and not self.annotation_file:  # rows: ids and a GT from examples
            examples = with_coco_ids(examples)
            gt_dataset = gt_from_examples(examples)
            write_json(self.out_dir, f"{self.name}_ground_truth.json", gt_dataset)
        metrics = evaluate_detections(
            examples,
            completions,
            gt_dataset=gt_dataset,
            annotation_file=self.annotation_file,
            category_ids=self.category_ids,
            lvis=self.lvis,
            **self.frame,
        )
        results = coco_results(examples, completions, **self.frame)
        write_json(self.out_dir, f"{self.name}_results.json", results)
        write_json(
            self.out_dir, f"{self.name}_predictions.json", prediction_records(examples, completions)
        )
        write_json(self.out_dir, f"{self.name}_metrics.json", metrics)
        for key, value in metrics.items():
            yield f"{self.name}/{key}", value
        yield f"{self.name}/num_examples", float(len(examples))
        yield f"{self.name}/bad_images", float(bad)
