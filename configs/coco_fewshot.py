r"""Few-shot COCO detection: the paper's 8 categories with K images each (Table 3).

Categories: bus, train, fire hydrant, stop sign, cat, dog, bed, toilet. Training examples are one
(image, category) pair each with every box of that category (0..1000 ints), K images per category
drawn deterministically from train2017 (seed 42; the paper's own draw is not released; the 4-shot
rows are on the Hub as laolao77/ViRFT_COCO_8_cate_4_shot, usable with configs/rows.py). Evaluation:
val2017, mean over the 8 categories of COCOeval per-category AP (`detection/map`, a fraction).
The reference asks each image only about categories its baseline model judged present (an exist
map); by default we ask about the categories with ground truth (`eval.detection_gate="gt"`), or
pass the reference's exist map JSON as `--config.eval.detection_gate=...`.

Expected (paper v1, mAP %, Qwen2-VL-2B): 4-shot baseline 19.6 / SFT 25.2 / Visual-RFT 40.6;
16-shot SFT 31.3 / Visual-RFT 46.8. 7B 4-shot: 43.0 / 44.1 / 54.3.

Command (arg: shots=1|2|4|8|16, model=2b|7b|qwen2_5_vl-3b|qwen2_5_vl-7b, runlocal):
  python -m vrft_jax.main --config configs/coco_fewshot.py:shots=4 --workdir /tmp/coco4 \
    --config.data.path=data/coco/annotations/instances_train2017.json \
    --config.data.image_root=data/coco/train2017 \
    --config.data.eval_path=data/coco/annotations/instances_val2017.json \
    --config.data.eval_image_root=data/coco/val2017
"""

from configs import base, common


def get_config(arg=None):
    a = common.parse_arg(arg, shots=4, model="2b", runlocal=False)
    c = base.get_config()
    common.reference_training(c, a.model)
    c.total_steps = 200  # paper: "train ... for 200 steps"
    c.data.source = "coco"
    c.data.path = "data/coco/annotations/instances_train2017.json"
    c.data.image_root = "data/coco/train2017"
    c.data.eval_path = "data/coco/annotations/instances_val2017.json"
    c.data.eval_image_root = "data/coco/val2017"
    c.data.categories = ("coco_fewshot8",)
    c.data.shots = a.shots
    c.rewards = (("format", 1.0), ("detection_iou", 1.0), ("detection_confidence", 1.0))
    common.apply_lora(c, a.lora)
    if a.runlocal:
        common.shrink_for_local(c)
    return c
