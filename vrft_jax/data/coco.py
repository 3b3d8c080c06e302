"""COCO and LVIS detection examples from an annotation JSON and an image folder (pycocotools).

One example per (image, category): the prompt names the category and the solution lists every
non-crowd box of that category in the image (0..1000 ints), as in the ViRFT_COCO rows.

Training ("train" mode): all (image, category) pairs of the chosen categories, or K images per
category (`shots`; the K-shot subset is a prefix of the 2K-shot one for the same seed), optionally
a random `max_examples` subset (the paper's "6K annotations"), optionally one "No Objects" negative
per image. Evaluation ("eval" mode): which categories each image is asked about is the `gate`:
"gt" (those with ground truth in the image; the paper gates with the baseline model's own
judgement instead, so "gt" never asks about absent categories and is optimistic), "verified"
(LVIS: "gt" plus the categories verified absent, `neg_category_ids`, so false positives count),
"all" (every chosen category on every image), or a path to a JSON exist map
{image id or file name: [category names]} like the reference's exist_map_*.json.
"""

import contextlib
import io
import json
import math
import os

import numpy as np

from vrft_jax.data import templates
from vrft_jax.data.example import DataError, Example, detection_solution, k_shot, to_thousandths
from vrft_jax.jsonio import read_json

COCO_FEWSHOT_8 = ("bus", "train", "fire hydrant", "stop sign", "cat", "dog", "bed", "toilet")
COCO_NOVEL_15 = (
    "mouse",
    "fork",
    "hot dog",
    "cat",
    "airplane",
    "suitcase",
    "parking meter",
    "sandwich",
    "train",
    "hair drier",
    "toilet",
    "toaster",
    "snowboard",
    "frisbee",
    "bear",
)
LVIS_FEWSHOT_6 = ("horse_buggy", "die", "kitchen_table", "omelet", "papaya", "stepladder")
LVIS_OV_13 = (
    "casserole",
    "die",
    "egg_roll",
    "futon",
    "garbage",
    "handsaw",
    "hippopotamus",
    "kitchen_table",
    "mallet",
    "omelet",
    "shot_glass",
    "stepladder",
    "sugar_bowl",
)
# Names usable in config.data.categories in place of a list.
CATEGORY_SETS = {
    "coco_fewshot8": COCO_FEWSHOT_8,
    "coco_novel15": COCO_NOVEL_15,
    "lvis_fewshot6": LVIS_FEWSHOT_6,
    "lvis_ov13": LVIS_OV_13,
}


# config.eval.detection_gate values besides a path to an exist-map JSON file.
GATES = ("gt", "verified", "all")


def read_annotations(annotation_file: str) -> dict:
    """The annotation JSON, checked for the fields indexing needs (DataError naming the file, the
    annotation or image id and the field)."""
    dataset = read_json(annotation_file, DataError)
    if not isinstance(dataset, dict):
        raise DataError(f"{annotation_file}: expected a JSON object with images and annotations")
    for field in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(field), list):
            raise DataError(f"{annotation_file} field {field}: missing or not a list")
    for ann in dataset["annotations"]:
        for field in ("id", "image_id", "category_id", "bbox"):
            if field not in ann:
                raise DataError(
                    f"{annotation_file} annotation id {ann.get('id')} field {field}: missing"
                )
        ann.setdefault("iscrowd", 0)  # LVIS has no iscrowd; pycocotools wants one
    for image in dataset["images"]:
        for field in ("id", "width", "height"):
            if field not in image:
                raise DataError(
                    f"{annotation_file} image id {image.get('id')} field {field}: missing"
                )
    return dataset


def _bbox(ann: dict, annotation_file: str) -> tuple[float, float, float, float]:
    """A COCO [x, y, w, h] box as pixel x1 y1 x2 y2; DataError unless four finite numbers with
    w, h >= 0."""
    bbox = ann["bbox"]
    ok = isinstance(bbox, list | tuple) and len(bbox) == 4
    ok = ok and all(type(v) in (int, float) and math.isfinite(v) for v in bbox)
    if not ok or bbox[2] < 0 or bbox[3] < 0:
        raise DataError(
            f"{annotation_file} annotation id {ann['id']} field bbox: {bbox!r} is not four finite "
            "numbers [x, y, w, h] with w, h >= 0"
        )
    x, y, w, h = bbox
    return (x, y, x + w, y + h)


def is_lvis(dataset: dict) -> bool:
    return any("frequency" in c for c in dataset.get("categories", []))


def resolve_categories(names, dataset: dict) -> list[dict]:
    """Category records chosen by `names` (names or set names), sorted by id.

    Set names: those in CATEGORY_SETS, "coco_base65" (every category not in coco_novel15),
    "lvis_rare" (frequency "r"). Empty `names` keeps every category of the file.
    """
    cats = sorted(dataset["categories"], key=lambda c: c["id"])
    by_name = {c["name"]: c for c in cats}
    if not names:
        return cats
    chosen = {}
    for name in names:
        if name in CATEGORY_SETS:
            expanded = CATEGORY_SETS[name]
        elif name == "coco_base65":
            expanded = [c["name"] for c in cats if c["name"] not in COCO_NOVEL_15]
        elif name == "lvis_rare":
            expanded = [c["name"] for c in cats if c.get("frequency") == "r"]
        else:
            expanded = [name]
        for n in expanded:
            if n not in by_name:
                raise DataError(f"config.data.categories: {n!r} is not a category of the file")
            chosen[n] = by_name[n]
    return sorted(chosen.values(), key=lambda c: c["id"])


def image_file(image: dict, image_root: str) -> str:
    """COCO has file_name; LVIS has coco_url ending in <split>/<file> (relative to the root)."""
    if "file_name" in image:
        relative = image["file_name"]
    elif "coco_url" in image:
        relative = os.path.join(*image["coco_url"].split("/")[-2:])
    else:
        raise DataError(f"image {image.get('id')}: neither file_name nor coco_url")
    return os.path.join(image_root, relative)


def prompt_name(category: dict) -> str:
    # LVIS names use underscores ("kitchen_table"); the prompt reads them as words.
    return category["name"].replace("_", " ")


class CocoDetection:
    """Random-access (image, category) detection examples from a COCO or LVIS annotation file."""

    def __init__(
        self,
        annotation_file: str,
        image_root: str,
        *,
        mode: str = "train",
        categories=(),
        shots: int = 0,
        seed: int = 0,
        negatives: bool = False,
        max_examples: int = 0,
        gate: str = "gt",
        max_eval_examples: int = 0,
    ):
        from pycocotools.coco import COCO

        if mode not in ("train", "eval"):
            raise ValueError(f"mode {mode!r}: expected 'train' or 'eval'")
        if not os.path.exists(annotation_file):
            raise DataError(f"annotation file not found: {annotation_file!r}")
        dataset = read_annotations(annotation_file)
        self.annotation_file = annotation_file
        self.data_files = [annotation_file]  # the validation cache key
        if gate not in GATES and mode == "eval" and os.path.isfile(gate):
            self.data_files.append(gate)
        self.lvis = is_lvis(dataset)
        coco = COCO()
        coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        self.coco, self.image_root = coco, image_root
        self.categories = resolve_categories(categories, dataset)
        self.category_ids = [c["id"] for c in self.categories]
        chosen = set(self.category_ids)

        present = {}  # image id -> set of chosen category ids with a non-crowd box
        for ann in dataset.get("annotations", []):
            if ann["category_id"] in chosen and not ann.get("iscrowd", 0):
                present.setdefault(ann["image_id"], set()).add(ann["category_id"])

        if mode == "train":
            pairs = sorted((img, cat) for img, cats in present.items() for cat in cats)
            picks = k_shot([p[0] for p in pairs], [p[1] for p in pairs], shots, seed)
            pairs = sorted(pairs[i] for i in picks)
            if max_examples and len(pairs) > max_examples:
                rng = np.random.default_rng([seed, 1])
                pairs = sorted(pairs[i] for i in rng.choice(len(pairs), max_examples, False))
            if negatives:
                pairs += self._negatives(sorted({p[0] for p in pairs}), present, seed)
        else:
            pairs = self._gated_pairs(gate, present)
            if max_eval_examples:
                pairs = _whole_images(pairs, max_eval_examples)
        self.pairs = pairs

    def _negatives(self, image_ids, present, seed):
        """One absent category per image (LVIS: only categories verified absent)."""
        rng = np.random.default_rng([seed, 2])
        out = []
        for img in image_ids:
            if self.lvis:
                verified = set(self.coco.imgs[img].get("neg_category_ids", []))
                absent = [c for c in self.category_ids if c in verified]
            else:
                absent = [c for c in self.category_ids if c not in present.get(img, set())]
            if absent:
                out.append((img, absent[int(rng.integers(len(absent)))]))
        return out

    def _gated_pairs(self, gate, present):
        if gate == "gt":
            return sorted((img, cat) for img, cats in present.items() for cat in cats)
        if gate == "verified":  # LVIS: also ask about categories verified absent (federated)
            chosen = set(self.category_ids)
            pairs = {(img, cat) for img, cats in present.items() for cat in cats}
            for img, image in self.coco.imgs.items():
                pairs.update((img, c) for c in image.get("neg_category_ids", []) if c in chosen)
            return sorted(pairs)
        if gate == "all":
            return [(img, cat) for img in sorted(self.coco.imgs) for cat in self.category_ids]
        if not os.path.exists(gate):
            raise DataError(
                f"config.eval.detection_gate={gate!r}: not gt, verified, all or a JSON file"
            )
        with open(gate, encoding="utf-8") as f:
            exist_map = json.load(f)
        id_of_name = {c["name"]: c["id"] for c in self.categories}
        by_file = {
            os.path.basename(i.get("file_name", "")): i["id"] for i in self.coco.imgs.values()
        }
        pairs = set()
        for key, names in exist_map.items():
            img = int(key) if str(key).isdigit() else by_file.get(os.path.basename(key))
            if img in self.coco.imgs:
                pairs.update((img, id_of_name[n]) for n in names if n in id_of_name)
        return sorted(pairs)

    @property
    def image_ids(self) -> list[int]:
        return sorted({img for img, _ in self.pairs})

    def __len__(self) -> int:
        return len(self.pairs)

    def row_key(self, index: int) -> str:
        img_id, cat_id = self.pairs[index]
        return f"{img_id}-{cat_id}"

    def row_where(self, index: int) -> str:
        img_id, cat_id = self.pairs[index]
        return f"{self.annotation_file} image id {img_id} category id {cat_id}"

    def drop_rows(self, keys) -> "CocoDetection":
        """Leaves out every image with a row in `keys` (a bad image or box), so its ground truth
        is not evaluated either. Returns self."""
        bad_images = {img for img, cat in self.pairs if f"{img}-{cat}" in keys}
        self.pairs = [p for p in self.pairs if p[0] not in bad_images]
        return self

    def __getitem__(self, index: int) -> Example:
        img_id, cat_id = self.pairs[index]
        image = self.coco.imgs[img_id]
        width, height = image["width"], image["height"]
        pixel_boxes = []
        for ann in self.coco.imgToAnns.get(img_id, []):
            if ann["category_id"] == cat_id and not ann.get("iscrowd", 0):
                pixel_boxes.append(_bbox(ann, self.annotation_file))
        pixel_boxes.sort()
        boxes = tuple(to_thousandths(b, width, height) for b in pixel_boxes)
        category = self.coco.cats[cat_id]
        path = image_file(image, self.image_root)
        return Example(
            image=path,
            problem=templates.detection_problem(prompt_name(category)),
            task="detection",
            solution=detection_solution(boxes),
            example_id=f"{img_id}-{cat_id}",
            image_id=img_id,
            image_path=path,
            image_size=(width, height),
            boxes=boxes,
            pixel_boxes=tuple(pixel_boxes),
            category=prompt_name(category),
            category_id=cat_id,
        )


def _whole_images(pairs, limit):
    """The first pairs in order, cut at an image boundary once `limit` is reached."""
    out = []
    for k, pair in enumerate(pairs):
        if len(out) >= limit and pair[0] != pairs[k - 1][0]:
            break
        out.append(pair)
    return out
