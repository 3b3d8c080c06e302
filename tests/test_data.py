"""Data sources: K-shot sampling, COCO/LVIS examples, rows, TFDS, folders, LISA, synthetic."""

import io
import json
import os

import numpy as np
import pytest
from coco_fixture import HEIGHT, WIDTH, make_coco, make_lvis
from PIL import Image

from configs import base
from vrft_jax.data import DataError, Pipeline, make_source
from vrft_jax.data.coco import CocoDetection
from vrft_jax.data.example import k_shot, to_thousandths
from vrft_jax.data.image_folder import ImageFolder
from vrft_jax.data.lisa import LisaGrounding
from vrft_jax.data.pipeline import load_image
from vrft_jax.data.rows import Rows
from vrft_jax.data.synthetic import COLOURS, SyntheticShapes
from vrft_jax.rewards import parsing


def test_k_shot_exact_nested_and_order_free():
    keys = list(range(40))
    groups = [k % 4 for k in keys]
    two = k_shot(keys, groups, 2, seed=3)
    assert sorted(np.bincount([groups[i] for i in two]).tolist()) == [2, 2, 2, 2]
    assert two == k_shot(keys, groups, 2, seed=3)  # deterministic
    four = k_shot(keys, groups, 4, seed=3)
    assert set(two) <= set(four)  # a K-shot subset is a prefix of the 2K-shot one
    assert set(k_shot(keys, groups, 4, seed=4)) != set(four)
    perm = np.random.default_rng(0).permutation(40)  # listing order does not matter
    shuffled = k_shot([keys[p] for p in perm], [groups[p] for p in perm], 2, seed=3)
    assert sorted(int(perm[i]) for i in shuffled) == sorted(two)
    few = k_shot([0, 1, 2], ["a", "a", "b"], 5, seed=0)  # small groups keep everything
    assert sorted(few) == [0, 1, 2]


def test_coco_k_shot_examples_and_boxes(tmp_path):
    ann, root = make_coco(tmp_path)
    src = CocoDetection(ann, root, categories=("cat", "dog"), shots=2, seed=0)
    per_cat = {}
    for i in range(len(src)):
        e = src[i]
        per_cat.setdefault(e.category, []).append(e.image_id)
        assert e.task == "detection" and f"category '{e.category}'" in e.problem
        assert os.path.exists(e.image) and e.image_size == (WIDTH, HEIGHT)
        parsed = parsing.parse_detection_answer(
            parsing.solution_answer(e.solution), is_solution=True
        )
        np.testing.assert_array_equal(parsed.boxes, np.asarray(e.boxes, np.float32))
    assert {k: len(v) for k, v in per_cat.items()} == {"cat": 2, "dog": 2}
    assert set(per_cat["cat"]) <= {1, 2, 3}  # image 5 holds only a crowd cat: never a positive
    again = CocoDetection(ann, root, categories=("cat", "dog"), shots=2, seed=0)
    assert again.pairs == src.pairs

    full = CocoDetection(ann, root)
    e = full[[p for p in range(len(full)) if full.pairs[p] == (3, 1)][0]]
    assert e.boxes == ((100, 300, 300, 700), (600, 100, 750, 400))  # two cats, 0..1000 ints
    assert e.pixel_boxes == ((20, 30, 60, 70), (120, 10, 150, 40))
    assert len(full) == 8  # (image, category) pairs with non-crowd boxes

    neg = CocoDetection(ann, root, categories=("cat", "dog"), negatives=True, seed=1)
    negatives = [neg[i] for i in range(len(neg)) if not neg[i].boxes]
    assert negatives and all(e.solution == "<answer>No Objects</answer>" for e in negatives)
    for e in negatives:
        assert (e.image_id, e.category_id) not in full.pairs


def test_coco_eval_gates_and_limits(tmp_path):
    ann, root = make_coco(tmp_path)
    gt = CocoDetection(ann, root, mode="eval", categories=("cat", "bus"))
    assert gt.pairs == [(1, 1), (2, 1), (3, 1), (5, 3), (6, 3)]
    every = CocoDetection(ann, root, mode="eval", categories=("cat", "bus"), gate="all")
    assert len(every) == 6 * 2
    exist = tmp_path / "exist.json"
    exist.write_text(json.dumps({"000000000004.png": ["cat"], "6": ["bus", "dog"]}))
    gated = CocoDetection(ann, root, mode="eval", categories=("cat", "bus"), gate=str(exist))
    assert gated.pairs == [(4, 1), (6, 3)]
    capped = CocoDetection(ann, root, mode="eval", gate="all", max_eval_examples=4)
    assert capped.pairs == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]  # whole images
    with pytest.raises(DataError, match="zebra"):
        CocoDetection(ann, root, categories=("zebra",))


def test_lvis_paths_rare_set_and_verified_negatives(tmp_path):
    ann, root = make_lvis(tmp_path)
    src = CocoDetection(ann, root, categories=("lvis_rare",), negatives=True, seed=0)
    assert src.lvis and [c["name"] for c in src.categories] == ["die", "kitchen_table"]
    e = src[0]
    assert e.image.endswith(os.path.join("val2017", f"{e.image_id:012d}.png"))
    assert os.path.exists(e.image) and e.category in ("die", "kitchen table")
    verified = CocoDetection(ann, root, mode="eval", categories=("lvis_rare",), gate="verified")
    positives = CocoDetection(ann, root, mode="eval", categories=("lvis_rare",))
    extra = sorted(set(verified.pairs) - set(positives.pairs))
    assert extra == [(2, 2), (3, 2), (4, 1), (5, 1), (5, 2), (6, 1)]  # verified-absent pairs
    for i in range(len(src)):
        e = src[i]
        if not e.boxes:  # negatives only from categories verified absent
            assert e.category_id in src.coco.imgs[e.image_id]["neg_category_ids"]


def _png(colour=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(buf, format="PNG")
    return buf.getvalue()


ROWS = [
    ("Detect ... the category 'bus' in the image",
     "<answer>[{'Position': [64, 0, 950, 411], 'Confidence': 1}]</answer>"),
    ("This is an image containing a plant.", "<answer>daisy</answer>"),
    ("Output the bounding box ...", "<answer> (120,40),(560,610) </answer>"),
]  # fmt: skip


def test_rows_parquet_hf_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "image": [{"bytes": _png(), "path": f"{k}.png"} for k in range(3)],
        "problem": [r[0] for r in ROWS],
        "solution": [r[1] for r in ROWS],
    })  # fmt: skip
    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(table, folder / "train-00000-of-00001.parquet", row_group_size=2)
    rows = Rows(str(folder))
    assert len(rows) == 3
    tasks = [rows[i].task for i in range(3)]
    assert tasks == ["detection", "classification", "grounding"]
    assert rows[0].boxes == ((64, 0, 950, 411),) and rows[0].category == "bus"
    assert rows[1].class_name == "daisy" and rows[2].boxes == ((120, 40, 560, 610),)
    image = load_image(rows[2]).image
    assert image.size == (32, 24) and image.mode == "RGB"


def test_rows_jsonl_with_paths(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "a.jpg")
    with open(tmp_path / "rows.jsonl", "w") as f:
        for k, (problem, solution) in enumerate(ROWS):
            key = "image" if k else "image_path"  # build_dataset.ipynb's JSON uses image_path
            f.write(json.dumps({key: "a.jpg", "problem": problem, "solution": solution}) + "\n")
    rows = Rows(str(tmp_path / "rows.jsonl"), image_root=str(tmp_path))
    assert [rows.task_at(i) for i in range(3)] == ["detection", "classification", "grounding"]
    assert load_image(rows[1]).image_size == (10, 10)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"problem": "p", "solution": "s"}) + "\n")
    bad = Rows(str(tmp_path / "bad.jsonl"))  # a bad row fails when read, naming line and field
    with pytest.raises(DataError, match="bad.jsonl line 1: field image"):
        bad[0]


def test_tfds_data_source_mocked():
    """tfds.data_source mocked (mock_data's own encoder needs TensorFlow): records hold encoded
    image bytes as the real source returns them with SkipDecoding."""
    tfds = pytest.importorskip("tensorflow_datasets")
    records = [{"image": _png((k * 20, 0, 0)), "label": k % 3, "file_name": f"{k}.jpg"}
               for k in range(12)]  # fmt: skip
    seen = {}

    def fake_source(builder, split, decoders=None, **kwargs):
        seen.update(name=builder.name, split=split, decoders=sorted(decoders or {}))
        return records

    config = base.get_config()
    config.data.source, config.data.tfds_name, config.data.shots = "tfds", "oxford_flowers102", 2
    with tfds.testing.mock_data(as_data_source_fn=fake_source):
        src = make_source(config.data, "train", seed=0)
        again = make_source(config.data, "train", seed=0)
    assert seen == {"name": "oxford_flowers102", "split": "train", "decoders": ["image"]}
    assert len(src) == 6 and [src[i].image_id for i in range(6)] == [
        again[i].image_id for i in range(6)
    ]
    assert sorted(src[i].label for i in range(6)) == [0, 0, 1, 1, 2, 2]
    e = src[0]
    assert e.class_name == src.class_names[e.label] == "pink primrose"
    assert e.solution == "<answer>pink primrose</answer>" and "plant" in e.problem
    assert load_image(e).image.size == (32, 24)


def test_image_folder_k_shot(tmp_path):
    for cls in ("Boeing_737", "A320"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / "train" / cls / f"{k}.jpg")
    src = ImageFolder(str(tmp_path), "train", shots=2, seed=0)
    assert len(src) == 4 and sorted(src.class_names) == ["A320", "Boeing 737"]
    assert {src[i].class_name for i in range(4)} == {"A320", "Boeing 737"}
    assert "aircraft" in src[0].problem


def test_lisa_polygon_to_box(tmp_path):
    Image.new("RGB", (400, 200)).save(tmp_path / "x.jpg")
    record = {
        "text": ["the thing you sit on", "the seat"],
        "is_sentence": True,
        "shapes": [{"label": "target", "points": [[40, 20], [200, 20], [120, 180]]},
                   {"label": "target", "points": [[0, 0], [5, 5]]}],
    }  # fmt: skip
    (tmp_path / "x.json").write_text(json.dumps(record))
    src = LisaGrounding(str(tmp_path))
    assert len(src) == 2
    e = src[1]
    assert e.boxes == ((100, 100, 500, 900),) and e.image_size == (400, 200)
    assert e.solution == "<answer> (100,100),(500,900) </answer>"
    assert "instruction: the seat" in e.problem
    parsed = parsing.parse_grounding_answer(parsing.solution_answer(e.solution))
    assert parsed.valid and parsed.boxes[0].tolist() == [100, 100, 500, 900]


def test_lisa_unreadable_image_is_a_bad_image_not_a_zero_box(tmp_path):
    """An image whose size cannot be read has no 0..1000 box: the pipeline counts it as a bad
    image (max_bad_fraction) instead of training on (0, 0, 0, 0)."""
    record = {"text": ["the seat"], "shapes": [{"label": "t", "points": [[0, 0], [8, 8]]}]}
    for name in ("good", "corrupt"):
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    Image.new("RGB", (16, 16)).save(tmp_path / "good.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg")
    src = LisaGrounding(str(tmp_path))
    bad = src[0]  # corrupt.json sorts first
    assert bad.image_path.endswith("corrupt.jpg") and bad.boxes == ()
    with pytest.raises(OSError, match="corrupt.jpg: cannot read its size"):
        load_image(bad)
    pipeline = Pipeline(src, batch_size=1, num_workers=1, max_bad_fraction=0.5)
    seen = [e for batch in pipeline for e in batch]
    assert [e.example_id for e in seen] == ["good.json#0"] and seen[0].boxes == ((0, 0, 500, 500),)
    assert list(pipeline.bad_images.bad) == [str(tmp_path / "corrupt.jpg")]
    with pytest.raises(DataError, match="max_bad_fraction=0.4"):
        list(Pipeline(src, batch_size=1, num_workers=1, max_bad_fraction=0.4))


def test_synthetic_deterministic_split_disjoint_and_parsable():
    train = SyntheticShapes("mixed", "train", seed=7, size=64)
    again = SyntheticShapes("mixed", "train", seed=7, size=64)
    held_out = SyntheticShapes("mixed", "eval", seed=7, size=64, length=16)
    for i in range(16):
        a, b = train[i], again[i]
        assert a.solution == b.solution and a.problem == b.problem
        np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
        assert not np.array_equal(np.asarray(a.image), np.asarray(held_out[i].image))
        assert a.task == ("classification" if i % 2 == 0 else "detection") == train.task_at(i)
    counts = {"empty": 0, "boxes": 0}
    for i in range(1, 80, 2):
        e = train[i]
        parsed = parsing.parse_detection_answer(
            parsing.solution_answer(e.solution), is_solution=True
        )
        assert parsed.valid and len(parsed.boxes) == len(e.boxes)
        counts["boxes" if e.boxes else "empty"] += 1
        pixels = np.asarray(e.image)
        colour = COLOURS[e.category.split()[0]]
        for x1, y1, x2, y2 in e.pixel_boxes:  # a target's centre has the target colour
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            assert tuple(pixels[cy, cx]) == colour
    assert counts["empty"] > 0 and counts["boxes"] > 0
    cls = [train[i] for i in range(0, 40, 2)]
    assert all(parsing.solution_answer(e.solution) == e.class_name for e in cls)
    assert len({e.class_name for e in cls}) == 3


def test_synthetic_colour_task_answers_the_drawn_colour():
    shapes = SyntheticShapes("classification", "train", seed=3, size=56)
    colours = SyntheticShapes("colour", "train", seed=3, size=56)
    names = set()
    for i in range(30):
        s, c = shapes[i], colours[i]
        assert c.task == "classification" == colours.task_at(i)
        assert "colour" in c.problem and "colour" not in s.problem
        assert parsing.solution_answer(c.solution) == c.class_name
        assert c.label == list(COLOURS).index(c.class_name)
        # A card of the answer's colour with the same draw's shape in a darker shade of it: the
        # colour is in every patch (the tiny demo model reads it), the shape where the shape
        # task drew it.
        card = COLOURS[c.class_name]
        shade = tuple(v * 3 // 5 for v in card)
        pixels = np.asarray(c.image)
        assert {tuple(p) for p in pixels.reshape(-1, 3)} == {card, shade}
        shape_mask = (np.asarray(s.image) != (235, 235, 235)).any(-1)
        np.testing.assert_array_equal((pixels == shade).all(-1), shape_mask)
        names.add(c.class_name)
    assert names == set(COLOURS)
    with pytest.raises(ValueError, match="synthetic_task='color'"):
        SyntheticShapes("color", "train", seed=0)


def test_make_source_dispatch(tmp_path):
    config = base.get_config()
    config.data.synthetic_size, config.data.num_eval_examples = 48, 10
    assert len(make_source(config.data, "eval", 0)) == 10
    ann, root = make_coco(tmp_path)
    config.data.update(source="coco", path=ann, image_root=root, shots=1, categories=("cat",))
    train = make_source(config.data, "train", 0)
    assert len(train) == 1
    config.data.eval_categories = ("dog",)
    evaluation = make_source(config.data, "eval", 0)
    assert {evaluation[i].category for i in range(len(evaluation))} == {"dog"}
    config.data.source = "nope"
    with pytest.raises(DataError, match="nope"):
        make_source(config.data, "train", 0)


def test_to_thousandths_truncates_and_clips():
    assert to_thousandths((10, 10, 60, 50), WIDTH, HEIGHT) == (50, 100, 300, 500)
    assert to_thousandths((-5, 0, 250, 100), WIDTH, HEIGHT) == (0, 0, 1000, 1000)
