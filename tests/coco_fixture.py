"""Tiny COCO- and LVIS-format annotation files with real image files, for data and eval tests."""

import json
import os

from PIL import Image

WIDTH, HEIGHT = 200, 100
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bus"}]
# image id -> [(category id, [x, y, w, h], iscrowd)]
BOXES = {
    1: [(1, [10, 10, 50, 40], 0), (2, [100, 20, 60, 60], 0)],
    2: [(1, [0, 0, 200, 100], 0)],
    3: [(1, [20, 30, 40, 40], 0), (1, [120, 10, 30, 30], 0)],
    4: [(2, [50, 50, 100, 40], 0)],
    5: [(3, [10, 10, 100, 50], 0), (1, [0, 0, 10, 10], 1)],
    6: [(2, [5, 5, 20, 20], 0), (3, [100, 40, 80, 50], 0)],
}


def _annotations(lvis: bool):
    out = []
    for image_id, boxes in BOXES.items():
        for cat, bbox, crowd in boxes:
            if lvis and crowd:
                continue
            ann = {"id": len(out) + 1, "image_id": image_id, "category_id": cat, "bbox": bbox}
            ann["area"] = bbox[2] * bbox[3]
            if not lvis:
                ann["iscrowd"] = crowd
            out.append(ann)
    return out


def write_images(folder, names):
    os.makedirs(folder, exist_ok=True)
    for k, name in enumerate(names):
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new("RGB", (WIDTH, HEIGHT), (20 * k % 255, 90, 160)).save(path)


def make_coco(root) -> tuple[str, str]:
    """(annotation file, image root) of a 6-image, 3-category COCO-format set."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    images = [
        {"id": i, "file_name": f"{i:012d}.png", "width": WIDTH, "height": HEIGHT} for i in BOXES
    ]
    dataset = {"images": images, "annotations": _annotations(False), "categories": CATEGORIES}
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump(dataset, f)
    write_images(os.path.join(root, "images"), [im["file_name"] for im in images])
    return path, os.path.join(root, "images")


LVIS_NAMES = {1: ("die", "r"), 2: ("kitchen_table", "r"), 3: ("person", "f")}


def make_lvis(root) -> tuple[str, str]:
    """(annotation file, image root) of the same boxes in LVIS format (federated fields)."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    images = []
    for i, boxes in BOXES.items():
        present = {c for c, _, crowd in boxes if not crowd}
        images.append(
            {
                "id": i,
                "coco_url": f"http://images.cocodataset.org/val2017/{i:012d}.png",
                "width": WIDTH,
                "height": HEIGHT,
                "neg_category_ids": [c for c in (1, 2, 3) if c not in present],
                "not_exhaustive_category_ids": [],
            }
        )
    categories = [
        {"id": c, "name": n, "frequency": f, "synonyms": [n], "image_count": 1, "instance_count": 1}
        for c, (n, f) in LVIS_NAMES.items()
    ]
    dataset = {"images": images, "annotations": _annotations(True), "categories": categories}
    path = os.path.join(root, "lvis_val.json")
    with open(path, "w") as f:
        json.dump(dataset, f)
    write_images(os.path.join(root, "val2017"), [f"{i:012d}.png" for i in BOXES])
    return path, root
