r"""Open-vocabulary LVIS: the COCO base-65 model tested on 13 rare LVIS categories (Table 7).

The paper evaluates the model trained with configs/coco_ov.py on lvis_v1_val over casserole,
die, egg_roll, futon, garbage, handsaw, hippopotamus, kitchen_table, mallet, omelet, shot_glass,
stepladder, sugar_bowl. So this config trains like coco_ov (or, with `total_steps=0` and
`resume=<coco_ov checkpoint>`, only evaluates) and evaluates on LVIS with the `lvis` package.

Expected (paper v1, mAP %): 2B baseline 2.7 / SFT 7.6 / Visual-RFT 20.7; 7B 15.7 / 24.0 / 30.4.

Command (evaluate a coco_ov checkpoint; arg: model=2b|7b|qwen2_5_vl-3b|qwen2_5_vl-7b, runlocal):
  python -m vrft_jax.main --config configs/lvis_ov.py --workdir /tmp/lvis_ov \
    --config.total_steps=0 --config.resume=/tmp/coco_ov/checkpoints \
    --config.data.path=data/coco/annotations/instances_train2017.json \
    --config.data.image_root=data/coco/train2017 \
    --config.data.eval_path=data/lvis/lvis_v1_val.json --config.data.eval_image_root=data/coco
"""

from configs import coco_ov, common


def get_config(arg=None):
    a = common.parse_arg(arg, model="2b", runlocal=False)
    c = coco_ov.get_config(f"model={a.model}")
    # Training reads COCO (coco_ov); the evaluation source is LVIS: the source kind follows the
    # evaluation file (a file with LVIS "frequency" fields is scored with the lvis package).
    c.data.eval_path = "data/lvis/lvis_v1_val.json"
    c.data.eval_image_root = "data/coco"
    c.data.eval_categories = ("lvis_ov13",)
    c.eval.detection_gate = "verified"  # present + verified-absent categories (federated)
    common.apply_lora(c, a.lora)
    if a.runlocal:
        common.shrink_for_local(c)
    return c
