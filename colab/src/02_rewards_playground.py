# ruff: noqa: E402

# %% [markdown]
# # Rewards playground
#
# Scores hand-written answers with every reward GRPO can use (the config's `rewards` list), then
# shows how a detection answer's boxes are matched to the ground truth: predictions in order of
# confidence each take the free ground-truth box of highest IoU, and keep it only if IoU >
# `reward.iou_threshold` (0.5).

# %%
# Setup. On Colab: fetch vrft_jax and install it. Anywhere else (a checkout, CI): nothing to do.
import os
import subprocess
import sys

REPO_URL = ""  # Colab only: the git URL of your vrft_jax copy (or upload it to /content/vrft_jax)

if "google.colab" in sys.modules:
    ROOT = "/content/vrft_jax"
    if not os.path.isdir(ROOT):
        if not REPO_URL:
            raise SystemExit("Set REPO_URL above, or upload the vrft_jax folder to " + ROOT)
        subprocess.run(["git", "clone", "--depth=1", REPO_URL, ROOT], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ROOT], check=True)
else:  # the repository this notebook lives in (the folder holding configs/base.py)
    ROOT = os.path.abspath(os.getcwd())
    while not os.path.isfile(os.path.join(ROOT, "configs", "base.py")):
        if os.path.dirname(ROOT) == ROOT:
            raise SystemExit("Run this notebook from inside the vrft_jax repository.")
        ROOT = os.path.dirname(ROOT)
sys.path.insert(0, ROOT)  # `vrft_jax` and `configs` import from the checkout
os.chdir(ROOT)
print("vrft_jax at", ROOT)

# %% parameters
# Parameters
IOU_THRESHOLD = 0.5  # config.reward.iou_threshold
IOU_DENOMINATOR = "max"  # config.reward.iou_denominator: "max" (reference) or "predictions"
SEED = 0

# %% [markdown]
# ## A detection example and hand-written answers

# %%
import numpy as np

from vrft_jax import rewards
from vrft_jax.data.example import from_thousandths
from vrft_jax.data.synthetic import SyntheticShapes

shapes = SyntheticShapes("detection", "eval", seed=SEED, size=224, length=64)
example = next(e for e in shapes if len(e.boxes) >= 2)
gt = [list(b) for b in example.boxes]  # 0..1000
print(example.category, "| solution:", example.solution)


def detection_answer(boxes, confs, think=True):
    items = [{"Position": [int(v) for v in b], "Confidence": c} for b, c in zip(boxes, confs)]
    text = f"<answer>{items}</answer>"
    return f"<think>I look for each {example.category}.</think> {text}" if think else text


def shifted(box, d):
    return [box[0] + d, box[1] + d, box[2] + d, box[3] + d]


false_alarm = [0, 0, 120, 120]
full = detection_answer(gt, [0.9] * len(gt))
answers = {
    "exact boxes": full,
    "shifted by 40": detection_answer([shifted(b, 40) for b in gt], [0.8] * len(gt)),
    "one missed + a false alarm": detection_answer(
        [shifted(b, 12) for b in gt[1:]] + [false_alarm], [0.9] * (len(gt) - 1) + [0.6]
    ),
    "exact, no <think>": detection_answer(gt, [0.9] * len(gt), think=False),
    "No Objects": "<think>nothing there</think> <answer>No Objects</answer>",
    "NaN confidence": detection_answer(gt[:1], [float("nan")]),
    "cut off mid-list": full[: full.rindex("Confidence")] + "</answer>",
    "prose": "There are some shapes in the picture.",
}

# %% [markdown]
# ## Every reward on every answer

# %%
options = {
    "iou_threshold": IOU_THRESHOLD,
    "iou_denominator": IOU_DENOMINATOR,
    "classification_match": "exact",
    "grounding": "iou",
}
specs = (("format", 1.0), ("detection_iou", 1.0), ("detection_confidence", 1.0))
names = list(answers)
total, parts = rewards.score(
    [answers[n] for n in names], [example.solution] * len(names), specs, options
)
print(f"{'answer':28} {'format':>7} {'iou':>7} {'conf':>7} {'total':>7}")
for i, n in enumerate(names):
    f, iou, conf = (parts[k][i] for k in ("format", "detection_iou", "detection_confidence"))
    print(f"{n:28} {f:7.3f} {iou:7.3f} {conf:7.3f} {total[i]:7.3f}")

# %% [markdown]
# Classification and grounding answers (the few-shot classification and LISA settings):

# %%
label = "<answer>circle</answer>"
for text in [
    "<think>round</think> <answer>circle</answer>",
    "<think>round</think> <answer> Circle </answer>",
    "<think>round</think> <answer>a circle or a square</answer>",
    "<think>round</think> <answer></answer>",
    "<think>it is a circle</think>",
]:
    exact = rewards.classification_reward([text], [label], match="exact")[0]
    contains = rewards.classification_reward([text], [label], match="contains")[0]
    print(f"exact {exact:.0f}  contains {contains:.0f}  {text!r}")

box = "<answer> (120,40),(560,610) </answer>"
for text in [
    "<think>t</think> <answer>(120,40),(560,610)</answer>",
    "<think>t</think> <answer>[150, 60, 600, 640]</answer>",
    "<think>t</think> <answer>(700,700),(900,900)</answer>",
]:
    iou = rewards.grounding_iou_reward([text], [box], mode="iou")[0]
    giou1 = rewards.grounding_iou_reward([text], [box], mode="giou_plus_one")[0]
    print(f"iou {iou:.3f}  giou+1 {giou1:.3f}  {text!r}")

# %% [markdown]
# ## IoU matching on a picture

# %%
import jax.numpy as jnp

shown = answers["one missed + a false alarm"]
pred = rewards.parse_detection_answer(rewards.extract_answer(shown))
truth = rewards.parse_detection_answer(rewards.extract_answer(example.solution), is_solution=True)
iou = np.asarray(rewards.pairwise_iou(jnp.asarray(pred.boxes), jnp.asarray(truth.boxes)))
matched, matched_iou = rewards.greedy_match(
    jnp.asarray(iou),
    jnp.asarray(pred.conf),
    jnp.ones(len(pred.boxes), bool),
    jnp.ones(len(truth.boxes), bool),
    IOU_THRESHOLD,
)
matched, matched_iou = np.asarray(matched), np.asarray(matched_iou)
print("IoU [predictions, ground truth]:\n", iou.round(3))
for p in range(len(pred.boxes)):
    g = int(iou[p].argmax())
    what = f"matches gt {g} (IoU {matched_iou[p]:.3f})" if matched[p] else "unmatched"
    print(f"prediction {p} conf {pred.conf[p]:.2f}: {what}")

# %%
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle


def draw_boxes(ax, boxes, colour, labels=None, style="-", label_below=False):
    """Outline pixel boxes [K, 4] (x1, y1, x2, y2) on a matplotlib axis, with optional labels."""
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=2, ls=style))
        if labels is not None:
            y, va = (y2 + 2, "top") if label_below else (y1 - 2, "bottom")
            ax.text(x1, y, labels[k], color=colour, fontsize=8, va=va)


# %%
W, H = example.image.size


def to_px(boxes):
    return np.asarray([from_thousandths(b, W, H) for b in boxes]).reshape(-1, 4)


fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(example.image)
draw_boxes(ax, to_px(truth.boxes), "green", [f"gt {g}" for g in range(len(truth.boxes))])
labels = [
    f"p{p} IoU {matched_iou[p]:.2f}" if matched[p] else f"p{p} unmatched"
    for p in range(len(pred.boxes))
]
pred_px = to_px(pred.boxes)
for p in range(len(pred.boxes)):
    colour = "darkorange" if matched[p] else "red"
    draw_boxes(ax, pred_px[p : p + 1], colour, [labels[p]], style="--", label_below=True)
ax.set_title("matched (orange) / unmatched (red) predictions, gt (green)")
ax.axis("off")
plt.show()

# %% [markdown]
# ## How the IoU reward falls as the boxes drift

# %%
shifts = list(range(0, 161, 10))
drifted = [detection_answer([shifted(b, d) for b in gt], [0.9] * len(gt)) for d in shifts]
iou_r, conf_r = rewards.detection_rewards(
    drifted,
    [example.solution] * len(shifts),
    iou_threshold=IOU_THRESHOLD,
    denominator=IOU_DENOMINATOR,
)
plt.figure(figsize=(5, 3))
plt.plot(shifts, iou_r, "o-", label="detection_iou")
plt.plot(shifts, conf_r, "s-", label="detection_confidence (conf 0.9)")
plt.xlabel("shift of every box (thousandths)")
plt.ylabel("reward")
plt.legend()
plt.show()
