r"""Open-vocabulary COCO detection: train on 65 base categories, test on 15 novel (Table 7).

Training: 6000 (image, category) examples drawn from train2017 over the 65 base categories
(the paper "randomly sampled 6K annotations"; its draw is not released, ours is seed 42;
laolao77/ViRFT_COCO_base65 on the Hub can be used with configs/rows.py instead), 2 epochs of 16
prompts per step = 750 steps as the reference's base65 script. Evaluation on val2017 over the 15
novel categories (mouse, fork, hot dog, cat, airplane, suitcase, parking meter, sandwich, train,
hair drier, toilet, toaster, snowboard, frisbee, bear): `detection/map` is mAP_n. Use
`eval=base` for mAP_b (65) or `eval=all` for mAP_all (80).

Expected (paper v1, mAP_n %): 2B baseline 9.8 / SFT 13.6 / Visual-RFT 31.3; 7B 26.3 / 25.7 / 35.8.

Command (arg: model=2b|7b|qwen2_5_vl-3b|qwen2_5_vl-7b, eval=novel|base|all, runlocal):
  python -m vrft_jax.main --config configs/coco_ov.py --workdir /tmp/coco_ov \
    --config.data.path=data/coco/annotations/instances_train2017.json \
    --config.data.image_root=data/coco/train2017 \
    --config.data.eval_path=data/coco/annotations/instances_val2017.json \
    --config.data.eval_image_root=data/coco/val2017
"""

from configs import base, common

EVAL_CATEGORIES = {"novel": ("coco_novel15",), "base": ("coco_base65",), "all": ()}


def get_config(arg=None):
    a = common.parse_arg(arg, model="2b", eval="novel", runlocal=False)
    if a.eval not in EVAL_CATEGORIES:
        raise ValueError(f"eval={a.eval!r}: expected one of {sorted(EVAL_CATEGORIES)}")
    c = base.get_config()
    common.reference_training(c, a.model)
    c.total_steps = 750  # 6000 examples x 2 epochs / 16 prompts
    c.data.source = "coco"
    c.data.path = "data/coco/annotations/instances_train2017.json"
    c.data.image_root = "data/coco/train2017"
    c.data.eval_path = "data/coco/annotations/instances_val2017.json"
    c.data.eval_image_root = "data/coco/val2017"
    c.data.categories = ("coco_base65",)
    c.data.eval_categories = EVAL_CATEGORIES[a.eval]
    c.data.max_examples = 6000
    c.rewards = (("format", 1.0), ("detection_iou", 1.0), ("detection_confidence", 1.0))
    common.apply_lora(c, a.lora)
    if a.runlocal:
        common.shrink_for_local(c)
    return c
