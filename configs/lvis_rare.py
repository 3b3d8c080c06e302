r"""Few-shot LVIS detection on 6 rare categories (Table 4).

Categories: horse_buggy, die, kitchen_table, omelet, papaya, stepladder; K images each from
lvis_v1_train (the Hub's laolao77/ViRFT_LVIS_few_shot has 65 rows, 1-10 images per category,
usable with configs/rows.py). Evaluation: lvis_v1_val, asking each image about the categories
present or verified absent (`eval.detection_gate="verified"`), through the `lvis` package's
federated evaluation (`pip install lvis`; without it pycocotools scores the same JSON, not
federated, and `detection/lvis_federated` is 0). `detection/map` is the mean per-category AP
over area "all"; `detection/map_reference` averages over all four area ranges as the reference
notebook did.
LVIS val images come from COCO train2017 and val2017: image_root holds both folders.

Expected (paper v1, mAP %): 2B baseline 4.0 / SFT 10.0 / Visual-RFT 19.4; 7B 15.4 / 27.6 / 33.8.

Command (arg: shots=10, model=2b|7b|qwen2_5_vl-3b|qwen2_5_vl-7b, runlocal):
  python -m vrft_jax.main --config configs/lvis_rare.py --workdir /tmp/lvis6 \
    --config.data.path=data/lvis/lvis_v1_train.json --config.data.image_root=data/coco \
    --config.data.eval_path=data/lvis/lvis_v1_val.json
"""

from configs import base, common


def get_config(arg=None):
    a = common.parse_arg(arg, shots=10, model="2b", runlocal=False)
    c = base.get_config()
    common.reference_training(c, a.model)
    c.total_steps = 200
    c.data.source = "lvis"
    c.data.path = "data/lvis/lvis_v1_train.json"
    c.data.image_root = "data/coco"  # holds train2017/ and val2017/ (LVIS coco_url layout)
    c.data.eval_path = "data/lvis/lvis_v1_val.json"
    c.data.categories = ("lvis_fewshot6",)
    c.eval.detection_gate = "verified"  # present + verified-absent categories (federated)
    c.data.shots = a.shots
    c.rewards = (("format", 1.0), ("detection_iou", 1.0), ("detection_confidence", 1.0))
    common.apply_lora(c, a.lora)
    if a.runlocal:
        common.shrink_for_local(c)
    return c
