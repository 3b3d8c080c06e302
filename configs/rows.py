r"""Train on Visual-RFT's published rows (the Hugging Face ViRFT_* data sets) read directly.

The rows (`image`, `problem`, `solution`) are read from the Hub's parquet shards as downloaded
(`huggingface-cli download laolao77/ViRFT_COCO_8_cate_4_shot --repo-type dataset --local-dir
data/ViRFT_COCO_8_cate_4_shot`), or from JSON lines with image paths. The reference's
`load_from_disk` fails on these files (its most reported issue); here no conversion is needed.
Each row's task comes from its solution; the `task` argument picks the rewards.

Expected: the paper setting the rows come from, e.g. ViRFT_COCO_8_cate_4_shot -> 4-shot COCO
(evaluate with configs/coco_fewshot.py, `total_steps=0`, `resume=` this run): 2B Visual-RFT
40.6 mAP; ViRFT_CLS_flower_4_shot -> 4-shot flowers (configs/cls_fewshot.py:dataset=flowers).

Command (arg: task=detection|classification|grounding, steps=200,
  model=2b|7b|qwen2_5_vl-3b|qwen2_5_vl-7b, runlocal):
  python -m vrft_jax.main --config configs/rows.py:task=detection --workdir /tmp/rows \
    --config.data.path=data/ViRFT_COCO_8_cate_4_shot/data
"""

from configs import base, common

REWARDS = {
    "detection": (("format", 1.0), ("detection_iou", 1.0), ("detection_confidence", 1.0)),
    "classification": (("format", 1.0), ("classification", 1.0)),
    "grounding": (("format", 1.0), ("grounding_iou", 1.0)),
}


def get_config(arg=None):
    a = common.parse_arg(arg, task="detection", steps=200, model="2b", runlocal=False)
    if a.task not in REWARDS:
        raise ValueError(f"task={a.task!r}: expected one of {sorted(REWARDS)}")
    c = base.get_config()
    common.reference_training(c, a.model)
    c.total_steps = a.steps
    c.data.source = "rows"
    c.data.path = "data/ViRFT_COCO_8_cate_4_shot/data"
    c.rewards = REWARDS[a.task]
    common.apply_lora(c, a.lora)
    if a.runlocal:
        common.shrink_for_local(c)
    return c
