"""Validation before any work: each bad input exits 2 with one line naming file, row and field.

The entry point runs the config check, the model-file check and the data pass before any model
is built, so every case here runs as `python -m vrft_jax.main ... --check_only` (and one as a real
run) in a subprocess, exactly as a user would.
"""

import json
import pathlib

import pytest
from coco_fixture import make_coco
from PIL import Image
from test_config import BASE, run_main

from vrft_jax import config_utils
from vrft_jax.data import DataError, make_source, validate
from vrft_jax.rewards import parsing

GOOD_DETECTION = "<answer>[{'Position': [64, 0, 950, 411], 'Confidence': 1}]</answer>"
PROBLEM = "Detect all objects belonging to the category 'bus' in the image."


@pytest.fixture(autouse=True)
def _no_dropped_rows():
    validate.clear_dropped()  # the registry is per process; keep tests independent
    yield
    validate.clear_dropped()


def write_rows(folder: pathlib.Path, n: int, *, solutions=None, lines=None, bad_images=()):
    """n JSONL rows sharing two small PNGs; `solutions` / `lines` replace rows by 1-based line,
    `bad_images` (1-based lines) point at a file that is not an image."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (10, 200, 30)).save(folder / "a.png")
    Image.new("RGB", (40, 28), (200, 10, 30)).save(folder / "b.png")
    (folder / "broken.png").write_bytes(b"this is not a PNG file")
    out = []
    for line in range(1, n + 1):
        image = "broken.png" if line in bad_images else ("a.png" if line % 2 else "b.png")
        solution = (solutions or {}).get(line, GOOD_DETECTION)
        row = json.dumps({"image": image, "problem": PROBLEM, "solution": solution})
        out.append((lines or {}).get(line, row))
    path = folder / "rows.jsonl"
    path.write_text("\n".join(out) + "\n")
    return path


def rows_flags(path: pathlib.Path, *extra):
    return (
        "--config",
        BASE,
        "--config.data.source=rows",
        f"--config.data.path={path}",
        f"--config.data.image_root={path.parent}",
        *extra,
    )


def assert_one_line_error(out: str, *parts: str):
    errors = [line for line in out.splitlines() if line.startswith("vrft_jax.main: error:")]
    assert len(errors) == 1, out
    for part in parts:
        assert part in errors[0], out
    assert "Traceback" not in out, out


def rows_config(path: pathlib.Path, **data):
    config = config_utils.load_config_file(BASE)
    config.data.source = "rows"
    config.data.path = str(path)
    config.data.image_root = str(path.parent)
    for key, value in data.items():
        config.data[key] = value
    return config


# ---- Each measured failure case ----------------------------------------------------------------


def test_malformed_detection_box_names_file_line_field(tmp_path):
    path = write_rows(
        tmp_path / "d", 11, solutions={3: "<answer>[{'Position': [10, 20, 30</answer>"}
    )
    code, out = run_main(*rows_flags(path), "--workdir", str(tmp_path / "w"), "--check_only")
    assert code == 2, out
    assert_one_line_error(out, f"{path} line 3 field solution", "1 of 11 rows are bad")


def test_two_number_box_is_rejected(tmp_path):
    two = "<answer>[{'Position': [10, 20], 'Confidence': 1}]</answer>"
    path = write_rows(tmp_path / "d", 11, solutions={5: two})
    code, out = run_main(*rows_flags(path), "--workdir", str(tmp_path / "w"), "--check_only")
    assert code == 2, out
    assert_one_line_error(
        out, f"{path} line 5 field solution", "[10, 20] is not four finite numbers"
    )


def test_bad_jsonl_line_names_its_line(tmp_path):
    path = write_rows(
        tmp_path / "d", 12, lines={11: '{"image": "a.png", "problem": "p", "solution": '}
    )
    code, out = run_main(*rows_flags(path), "--workdir", str(tmp_path / "w"), "--check_only")
    assert code == 2, out
    assert_one_line_error(out, f"{path} line 11: not valid JSON")


def test_truncated_parquet_names_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "d"
    folder.mkdir()
    table = pa.table(
        {"image": [b"x"] * 4, "problem": [PROBLEM] * 4, "solution": ["<answer>a</answer>"] * 4}
    )
    path = folder / "train-00000.parquet"
    pq.write_table(table, path)
    path.write_bytes(path.read_bytes()[:-20])  # a download cut short
    code, out = run_main(*rows_flags(path), "--workdir", str(tmp_path / "w"), "--check_only")
    assert code == 2, out
    assert_one_line_error(out, f"{path}: cannot read parquet")


def test_broken_model_config_json_names_the_file(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2_vl",\n')
    code, out = run_main(
        "--config",
        BASE,
        f"--config.model_init={model}",
        "--workdir",
        str(tmp_path / "w"),
        "--check_only",
    )
    assert code == 2, out
    assert_one_line_error(out, f"{model / 'config.json'} line 2 column 1: not valid JSON")


def test_broken_model_config_field_names_the_file(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code, out = run_main(
        "--config",
        BASE,
        f"--config.model_init={model}",
        "--workdir",
        str(tmp_path / "w"),
        "--check_only",
    )
    assert code == 2, out
    assert_one_line_error(out, str(model / "config.json"), "model_type")


def test_one_bad_image_of_11_fails_before_any_model(tmp_path):
    """A real run (not --check_only): it stops in the data pass, before the model or step 1."""
    path = write_rows(tmp_path / "d", 11, bad_images={1})
    workdir = tmp_path / "w"
    code, out = run_main(*rows_flags(path, "--config.total_steps=2"), "--workdir", str(workdir))
    assert code == 2, out
    assert_one_line_error(out, f"{path} line 1 field image", "broken.png", "1 of 11 rows are bad")
    assert "model from" not in out  # train.run logs this once the model is built
    assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()


def test_one_bad_image_of_200_is_dropped_and_reported(tmp_path):
    path = write_rows(tmp_path / "d", 200, bad_images={7})
    code, out = run_main(*rows_flags(path), "--workdir", str(tmp_path / "w"), "--check_only")
    assert code == 0, out
    assert "dropping 1 bad rows of 200" in out and f"{path} line 7 field image" in out, out

    config = rows_config(path)
    report = validate.validate_data(config, str(tmp_path / "w2"))
    assert report["rows"] == 200 and len(report["bad"]) == 1
    train = make_source(config.data, "train", config.seed)
    assert len(train) == 199
    assert all("broken.png" not in str(train[i].image) for i in range(len(train)))
    held_out = make_source(config.data, "eval", config.seed)  # the cap counts good rows only
    assert len(held_out) == config.data.num_eval_examples
    assert all("broken.png" not in str(held_out[i].image) for i in range(len(held_out)))


@pytest.mark.parametrize(
    "field, value",
    [
        ("trainer", "ppo"),
        ("model.preset", "huge"),
        ("model.master_dtype", "int8"),
        ("model.compute_dtype", "float33"),
        ("optim.mu_dtype", "int32"),
        ("model.attention", "flash"),
        ("model.remat", "some"),
        ("model.box_frame", "pixels"),
        ("input.prompt_template", "chat"),
        ("input.classification_subject", "birds"),
        ("data.source", "csv"),
        ("data.synthetic_task", "counting"),
        ("optim.schedule", "step"),
        ("grpo.advantage", "ppo"),
        ("grpo.kl_estimator", "k4"),
        ("grpo.loss_aggregation", "sum"),
        ("reward.iou_denominator", "min"),
        ("reward.grounding", "giou"),
        ("reward.classification_match", "fuzzy"),
        ("eval.detection_gate", "sometimes"),
        ("rewards", ("format",)),
        ("rewards", (("format", 1.0), ("formatt", 1.0))),
        ("mesh", (("data", 1), ("model", -1))),
        ("mesh", (("data", -1), ("fsdp", -1))),
        ("mesh_rules", (("embed", "model"),)),
    ],
)
def test_each_bad_enumerated_value_is_named(field, value):
    config = config_utils.load_config_file(BASE)
    parent, _, leaf = field.rpartition(".")
    node = config_utils.get_field(config, parent) if parent else config
    with node.ignore_type():
        node[leaf] = value
    errors = config_utils.check_values(config)
    assert len(errors) == 1 and errors[0].startswith(f"config.{field.split('.')[0]}"), errors


def test_check_only_reports_every_bad_value(tmp_path):
    code, out = run_main(
        "--config", BASE, "--workdir", str(tmp_path / "w"), "--check_only",
        "--config.trainer=ppo", "--config.model.preset=huge", "--config.rewards=format",
        "--config.optim.schedule=step", "--config.data.source=csv", "--config.model.box_frame=px",
    )  # fmt: skip
    assert code == 2, out
    assert "6 bad config values" in out and "Traceback" not in out, out
    assert "config.model.box_frame='px': expected one of auto, relative_1000, absolute" in out
    for field in ("trainer", "model.preset", "rewards", "optim.schedule", "data.source"):
        assert f"config.{field}" in out, out
    assert not (tmp_path / "w" / "config.json").exists()  # stopped before writing anything


def test_every_shipped_config_passes_the_value_check():
    for path in sorted((pathlib.Path(BASE).parent).glob("*.py")):
        if path.name in ("common.py", "__init__.py"):
            continue
        assert config_utils.check_values(config_utils.load_config_file(str(path))) == [], path


def test_verbosity_1_shows_the_traceback(tmp_path):
    path = write_rows(tmp_path / "d", 11, bad_images={1, 2})
    code, out = run_main(
        *rows_flags(path), "--workdir", str(tmp_path / "w"), "--check_only", "--verbosity=1"
    )
    assert code != 0 and "Traceback" in out and "DataError" in out, out


# ---- The pass itself: cache, COCO, solutions ---------------------------------------------------


def test_restart_skips_the_pass_until_a_file_changes(tmp_path, monkeypatch):
    path = write_rows(tmp_path / "d", 40, bad_images={3})
    config = rows_config(path, max_bad_fraction=0.05)
    workdir = tmp_path / "w"
    workdir.mkdir()
    first = validate.validate_data(config, str(workdir))
    assert not first["cached"] and len(first["bad"]) == 1
    cache = workdir / validate.CACHE_FILE
    written = cache.read_bytes()

    def no_checks(*args):
        raise AssertionError("a cached pass read a row")

    monkeypatch.setattr(validate, "check_row", no_checks)
    again = validate.validate_data(config, str(workdir))
    assert again["cached"] and again["bad"] == first["bad"]
    assert cache.read_bytes() == written  # a restart rewrites nothing

    with open(path, "a") as f:  # the data file changed (size and mtime): checked again
        f.write(
            json.dumps({"image": "a.png", "problem": PROBLEM, "solution": GOOD_DETECTION}) + "\n"
        )
    with pytest.raises(AssertionError, match="a cached pass read a row"):
        validate.validate_data(config, str(workdir))


def test_parquet_bad_image_names_the_row_index(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (32, 24)).save(buf, format="PNG")
    images = [{"bytes": buf.getvalue(), "path": f"{k}.png"} for k in range(4)]
    images[2] = {"bytes": buf.getvalue()[:30], "path": "2.png"}  # cut inside the header
    table = pa.table({"image": images, "problem": [PROBLEM] * 4, "solution": [GOOD_DETECTION] * 4})
    path = tmp_path / "train.parquet"
    pq.write_table(table, path, row_group_size=3)
    config = rows_config(path, max_bad_fraction=0.0)
    with pytest.raises(DataError, match=rf"{path} row 2 field image: "):
        validate.validate_data(config, None)


def test_coco_bad_bbox_names_the_annotation_id(tmp_path):
    ann_file, image_root = make_coco(tmp_path)
    dataset = json.loads(pathlib.Path(ann_file).read_text())
    bad = dataset["annotations"][0]
    bad["bbox"] = [1.0, 2.0]
    pathlib.Path(ann_file).write_text(json.dumps(dataset))
    config = config_utils.load_config_file(BASE)
    config.data.source, config.data.path = "coco", str(ann_file)
    config.data.image_root = image_root
    config.data.max_bad_fraction = 0.0
    with pytest.raises(DataError, match=rf"annotation id {bad['id']} field bbox: \[1.0, 2.0\]"):
        validate.validate_data(config, None)


def test_solution_parser_is_strict():
    assert parsing.parse_detection_solution("No Objects") == ()
    assert parsing.parse_detection_solution("[]") == ()
    boxes = parsing.parse_detection_solution("[{'Position': [1, 2, 3, 4.5], 'Confidence': 1}]")
    assert boxes == ((1.0, 2.0, 3.0, 4.5),)
    assert parsing.parse_detection_solution("{'position': [1, 2, 3, 4]}") == ((1, 2, 3, 4),)
    for bad, reason in [
        ("[{'Position': [10, 20, 30", "not a list of boxes"),
        ("[{'Position': [10, 20]}]", "not four finite numbers"),
        ("[{'Position': [1, 2, 3, NaN]}]", "not four finite numbers"),
        ("[{'Position': [1, 2, 3, 'x']}]", "not four finite numbers"),
        ("[{'Box': [1, 2, 3, 4]}]", "no 'Position'"),
        ("[{'Position': [1, 2, 3, 4]}, {'Position': [1, 2, 3, 4]},", "not a list of boxes"),
    ]:
        with pytest.raises(parsing.SolutionError, match=reason):
            parsing.parse_detection_solution(bad)
    assert parsing.parse_grounding_solution(" (1,2),(30,40) ") == (1.0, 2.0, 30.0, 40.0)
    with pytest.raises(parsing.SolutionError):
        parsing.parse_grounding_solution("somewhere")
