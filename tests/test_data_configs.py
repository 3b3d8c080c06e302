"""Paper configs: parse, add no unknown fields, carry the reference's settings, and wire up."""

import importlib

import pytest
from coco_fixture import make_coco, make_lvis

from configs import base
from vrft_jax.data import make_source
from vrft_jax.evals import make_evaluators

PAPER_CONFIGS = {
    "coco_fewshot": ["", "shots=16,model=7b", "model=qwen2_5_vl-7b", "runlocal"],
    "lvis_rare": ["", "runlocal"],
    "coco_ov": ["", "eval=base", "runlocal"],
    "lvis_ov": ["", "runlocal"],
    "cls_fewshot": [
        "dataset=flowers",
        "dataset=pets,shots=1",
        "dataset=cars",
        "dataset=aircraft,runlocal",
    ],  # fmt: skip
    "lisa": ["", "model=qwen2_5_vl-3b", "model=qwen3_vl-8b", "runlocal"],
    "rows": ["", "task=classification,runlocal"],
}


def _leaves(config, prefix=""):
    out = set()
    for key, value in config.items():
        if hasattr(value, "items"):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def _load(name, arg):
    return importlib.import_module(f"configs.{name}").get_config(arg or None)


@pytest.mark.parametrize(
    "name,arg", [(n, a) for n, args in PAPER_CONFIGS.items() for a in args]
)  # fmt: skip
def test_paper_config_fields_and_settings(name, arg):
    config = _load(name, arg)
    assert _leaves(config) == _leaves(base.get_config())  # nothing misspelled or new
    assert config.optim.lr == 1e-6 and config.grpo.beta == 0.04
    assert config.input.prompt_template == "raw"
    big = "7b" in arg or "8b" in arg  # G 4 for the 7B / 8B models, 8 for the smaller ones
    assert config.grpo.G == (2 if "runlocal" in arg else 4 if big else 8)
    assert config.runlocal == ("runlocal" in arg)
    assert "Expected" in importlib.import_module(f"configs.{name}").__doc__
    if "runlocal" in arg:
        assert config.model.preset == "tiny" and config.total_steps <= 2
    if "qwen2_5_vl" in arg:  # the Qwen2.5-VL preset and hub folder name
        size = arg.partition("qwen2_5_vl-")[2][:2]
        assert config.model.preset == f"qwen2_5_vl-{size}"
        assert config.model_init.endswith(f"Qwen2.5-VL-{size.upper()}-Instruct")
    if "qwen3_vl" in arg:  # the Qwen3-VL preset and hub folder name
        size = arg.partition("qwen3_vl-")[2][:2]
        assert config.model.preset == f"qwen3_vl-{size}"
        assert config.model_init.endswith(f"Qwen3-VL-{size.upper()}-Instruct")


def test_config_arguments_are_checked():
    with pytest.raises(ValueError, match="shot"):
        _load("coco_fewshot", "shot=4")
    with pytest.raises(ValueError, match="birds"):
        _load("cls_fewshot", "dataset=birds")
    assert _load("coco_fewshot", "shots=8").data.shots == 8


def test_runlocal_configs_build_sources_and_evaluators(tmp_path):
    ann, root = make_coco(tmp_path / "coco")
    config = _load("coco_fewshot", "runlocal")
    config.data.update(path=ann, image_root=root, eval_path=ann, eval_image_root=root)
    config.data.categories = ("cat", "dog", "bus")  # the fixture's names
    train = make_source(config.data, "train", config.seed)
    assert len(train) == 3 + 3 + 2  # 4 shots asked; cat, dog, bus have 3, 3, 2 images
    (evaluator,) = make_evaluators(config, str(tmp_path / "work"))
    assert evaluator.name == "detection" and len(evaluator.source) == 8

    lvis_ann, lvis_root = make_lvis(tmp_path / "lvis")
    config = _load("lvis_ov", "runlocal")
    config.data.update(eval_path=lvis_ann, eval_image_root=lvis_root)
    config.data.eval_categories = ("die", "kitchen_table")
    (evaluator,) = make_evaluators(config, str(tmp_path / "work"))
    assert evaluator.lvis and evaluator.annotation_file == lvis_ann
