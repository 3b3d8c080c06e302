r"""Reasoning grounding on LISA / ReasonSeg (Table 6).

Training: ReasonSeg train (239 images), one example per instruction sentence, the box being the
min/max of the first polygon, as the reference's gen_box_ann.py / gen_sft.py. Paper: "500
fine-tuning steps"; gradient checkpointing on, as the reference's LISA script. Reward: format +
GIoU + 1 (the reference's code; its checkpoint name says IoU, unverified which gave the paper's
numbers; set `--config.reward.grounding=iou` for plain IoU). Evaluation on ReasonSeg test:
`grounding/miou` (mean box IoU) and `grounding/accuracy_iou50`. The paper's gIoU needs SAM masks
and is not computed here.

Expected (paper v1, mIoU_test %): 2B baseline 26.9 / SFT 28.3 / Visual-RFT 37.6; 7B 40.4 / 39.1 /
43.9.

Command (arg: model=2b|7b|qwen2_5_vl-3b|qwen2_5_vl-7b, runlocal):
  python -m vrft_jax.main --config configs/lisa.py --workdir /tmp/lisa \
    --config.data.path=data/reason_seg/ReasonSeg/train \
    --config.data.eval_path=data/reason_seg/ReasonSeg/test
"""

from configs import base, common


def get_config(arg=None):
    a = common.parse_arg(arg, model="2b", runlocal=False)
    c = base.get_config()
    common.reference_training(c, a.model)
    c.total_steps = 500
    c.model.remat = "full"
    c.data.source = "lisa"
    c.data.path = "data/reason_seg/ReasonSeg/train"
    c.data.eval_path = "data/reason_seg/ReasonSeg/test"
    c.rewards = (("format", 1.0), ("grounding_iou", 1.0))
    c.reward.grounding = "giou_plus_one"
    c.eval.max_new_tokens = 128  # the reference's LISA inference
    common.apply_lora(c, a.lora)
    if a.runlocal:
        common.shrink_for_local(c)
    return c
