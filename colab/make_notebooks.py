r"""Writes the Colab notebooks colab/*.ipynb (without outputs) from the cell sources below.

Edit the cells here, then run `python colab/make_notebooks.py`; tests/test_notebooks.py checks that
the committed notebooks equal what this script writes, and executes each one on the tiny model.

Every notebook starts with the same setup cell (installs vrft_jax on Colab, a no-op elsewhere) and
has one cell tagged "parameters" (papermill's convention): the test runs the notebooks with a cell
of smaller settings inserted after it.
"""

import os

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = r'''# Setup. On Colab: fetch vrft_jax and install it. Anywhere else (a checkout, CI): nothing to do.
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
print("vrft_jax at", ROOT)'''

DRAW = r'''import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle


def draw_boxes(ax, boxes, colour, labels=None, style="-", label_below=False):
    """Outline pixel boxes [K, 4] (x1, y1, x2, y2) on a matplotlib axis, with optional labels."""
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        ax.add_patch(
            Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=2, ls=style)
        )
        if labels is not None:
            y, va = (y2 + 2, "top") if label_below else (y1 - 2, "bottom")
            ax.text(x1, y, labels[k], color=colour, fontsize=8, va=va)'''


def _cell(kind, source, tags=()):
    if kind == "md":
        return nbformat.v4.new_markdown_cell(source)
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


# ---- 01: inference ------------------------------------------------------------------------------

INFERENCE = [
    (
        "md",
        "# Ask Qwen2-VL about an image and draw its boxes\n\n"
        "Loads a Qwen2-VL checkpoint (a Hugging Face folder: `config.json`, `*.safetensors`, "
        "tokenizer files), asks it to detect a category with the Visual-RFT prompt, decodes "
        "greedily, parses the `<answer>` and draws the predicted boxes (red) next to the ground "
        "truth (green, for the built-in synthetic image).\n\n"
        "With `CHECKPOINT = \"\"` it uses the *tiny random* model: the answer is noise and no box "
        "parses, but every step runs. For a real answer, download e.g. `Qwen/Qwen2-VL-2B-Instruct` "
        "(`huggingface-cli download Qwen/Qwen2-VL-2B-Instruct --local-dir /content/qwen2vl2b`) "
        "or a Visual-RFT checkpoint, and use a GPU or TPU runtime.",
    ),
    ("code", SETUP),
    (
        "code",
        "# Parameters\n"
        'CHECKPOINT = ""  # Hugging Face Qwen2-VL folder; "" = the tiny random model\n'
        'IMAGE = ""  # your image file; "" = a synthetic shapes image (with ground-truth boxes)\n'
        'CATEGORY = ""  # what to detect; "" = the synthetic image\'s category\n'
        "MAX_NEW_TOKENS = 256  # greedy decoding length\n"
        'DTYPE = "float32"  # "bfloat16" on GPU/TPU for the 2B/7B models\n'
        "MAX_PIXELS = 401408  # image processor bound (512 * 28 * 28: at most 512 visual tokens)\n"
        "SEED = 0",
        ("parameters",),
    ),
    ("md", "## Model and prompt processor"),
    (
        "code",
        "import jax\n"
        "import jax.numpy as jnp\n"
        "import numpy as np\n\n"
        "from vrft_jax import hf\n"
        "from vrft_jax.config_utils import SHIPPED_TOKENIZER_DIR\n"
        "from vrft_jax.inputs import PromptProcessor\n\n"
        "print(jax.devices())\n"
        "if CHECKPOINT:\n"
        "    model = hf.load_qwen2_vl(CHECKPOINT, dtype=jnp.dtype(DTYPE))\n"
        "    has_tokenizer = os.path.isfile(os.path.join(CHECKPOINT, 'tokenizer_config.json'))\n"
        "    tokenizer_dir = CHECKPOINT if has_tokenizer else SHIPPED_TOKENIZER_DIR\n"
        "else:\n"
        '    model = hf.random_qwen2_vl("tiny", seed=SEED)\n'
        "    tokenizer_dir = SHIPPED_TOKENIZER_DIR\n"
        "processor = PromptProcessor(tokenizer_dir, min_pixels=3136, max_pixels=MAX_PIXELS)\n"
        "print(model.config.hidden_size, 'wide,', model.config.num_hidden_layers, 'layers')",
    ),
    ("md", "## The image and the question"),
    (
        "code",
        "from PIL import Image\n\n"
        "from vrft_jax import prompts\n"
        "from vrft_jax.data.example import from_thousandths\n"
        "from vrft_jax.data.synthetic import SyntheticShapes\n\n"
        "gt_boxes = np.zeros((0, 4))  # pixels; known only for the synthetic image\n"
        "if IMAGE:\n"
        '    image = Image.open(IMAGE).convert("RGB")\n'
        '    category = CATEGORY or "object"\n'
        "else:\n"
        '    shapes = SyntheticShapes("detection", "eval", seed=SEED, size=224, length=64)\n'
        "    example = next(e for e in shapes if len(e.boxes) >= 2)  # one with 2+ targets\n"
        "    image, category = example.image, CATEGORY or example.category\n"
        "    if category == example.category:\n"
        "        gt_boxes = np.asarray(example.pixel_boxes)\n"
        'question = prompts.build_prompt("detection", category=category)\n'
        "print(question)",
    ),
    ("md", "## Greedy decoding"),
    (
        "code",
        "from vrft_jax import sampler\n\n"
        "batch = processor.encode_batch([([image], question)])\n"
        "print({k: v.shape for k, v in batch.items()})\n"
        "out = sampler.generate(model, **batch, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)\n"
        "completion = processor.decode(out.tokens, out.mask)[0]\n"
        "print(repr(completion))",
    ),
    ("md", "## Parse the answer and draw the boxes"),
    (
        "code",
        "from vrft_jax.rewards import extract_answer, parse_detection_answer, score\n\n"
        "answer = extract_answer(completion)\n"
        "parsed = parse_detection_answer(answer)\n"
        "W, H = image.size\n"
        "pred_boxes = np.asarray([from_thousandths(b, W, H) for b in parsed.boxes]).reshape(-1, 4)\n"
        'print("answer:", answer)\n'
        'print("readable:", parsed.valid, "| boxes (0..1000):", parsed.boxes.tolist())\n'
        "if not IMAGE and category == example.category:  # the rewards GRPO would give this answer\n"
        '    specs = (("format", 1.0), ("detection_iou", 1.0), ("detection_confidence", 1.0))\n'
        "    total, parts = score([completion], [example.solution], specs)\n"
        '    print("reward", float(total[0]), {k: float(v[0]) for k, v in parts.items()})',
    ),
    ("code", DRAW),
    (
        "code",
        "fig, ax = plt.subplots(figsize=(5, 5))\n"
        "ax.imshow(image)\n"
        'draw_boxes(ax, gt_boxes, "green", ["gt"] * len(gt_boxes))\n'
        'pred_labels = [f"{c:.2f}" for c in parsed.conf]\n'
        'draw_boxes(ax, pred_boxes, "red", pred_labels, style="--", label_below=True)\n'
        'ax.set_title(f"{category}: {len(pred_boxes)} predicted (red), {len(gt_boxes)} gt (green)")\n'
        'ax.axis("off")\n'
        "plt.show()",
    ),
]

# ---- 02: rewards playground ---------------------------------------------------------------------

REWARDS = [
    (
        "md",
        "# Rewards playground\n\n"
        "Scores hand-written answers with every reward GRPO can use (the config's `rewards` "
        "list), then shows how a detection answer's boxes are matched to the ground truth: "
        "predictions in order of confidence each take the free ground-truth box of highest IoU, "
        "and keep it only if IoU > `reward.iou_threshold` (0.5).",
    ),
    ("code", SETUP),
    (
        "code",
        "# Parameters\n"
        "IOU_THRESHOLD = 0.5  # config.reward.iou_threshold\n"
        'IOU_DENOMINATOR = "max"  # config.reward.iou_denominator: "max" (reference) or "predictions"\n'
        "SEED = 0",
        ("parameters",),
    ),
    ("md", "## A detection example and hand-written answers"),
    (
        "code",
        "import numpy as np\n\n"
        "from vrft_jax import rewards\n"
        "from vrft_jax.data.example import from_thousandths\n"
        "from vrft_jax.data.synthetic import SyntheticShapes\n\n"
        'shapes = SyntheticShapes("detection", "eval", seed=SEED, size=224, length=64)\n'
        "example = next(e for e in shapes if len(e.boxes) >= 2)\n"
        "gt = [list(b) for b in example.boxes]  # 0..1000\n"
        'print(example.category, "| solution:", example.solution)\n\n\n'
        "def detection_answer(boxes, confs, think=True):\n"
        "    items = [{'Position': [int(v) for v in b], 'Confidence': c} for b, c in zip(boxes, confs)]\n"
        '    text = f"<answer>{items}</answer>"\n'
        '    return f"<think>I look for each {example.category}.</think> {text}" if think else text\n\n\n'
        "def shifted(box, d):\n"
        "    return [box[0] + d, box[1] + d, box[2] + d, box[3] + d]\n\n\n"
        "false_alarm = [0, 0, 120, 120]\n"
        "full = detection_answer(gt, [0.9] * len(gt))\n"
        "answers = {\n"
        '    "exact boxes": full,\n'
        '    "shifted by 40": detection_answer([shifted(b, 40) for b in gt], [0.8] * len(gt)),\n'
        '    "one missed + a false alarm": detection_answer([shifted(b, 12) for b in gt[1:]] + [false_alarm], [0.9] * (len(gt) - 1) + [0.6]),\n'
        '    "exact, no <think>": detection_answer(gt, [0.9] * len(gt), think=False),\n'
        '    "No Objects": "<think>nothing there</think> <answer>No Objects</answer>",\n'
        "    \"NaN confidence\": detection_answer(gt[:1], [float('nan')]),\n"
        '    "cut off mid-list": full[: full.rindex("Confidence")] + "</answer>",\n'
        '    "prose": "There are some shapes in the picture.",\n'
        "}",
    ),
    ("md", "## Every reward on every answer"),
    (
        "code",
        "options = {\n"
        '    "iou_threshold": IOU_THRESHOLD,\n'
        '    "iou_denominator": IOU_DENOMINATOR,\n'
        '    "classification_match": "exact",\n'
        '    "grounding": "iou",\n'
        "}\n"
        'specs = (("format", 1.0), ("detection_iou", 1.0), ("detection_confidence", 1.0))\n'
        "names = list(answers)\n"
        "total, parts = rewards.score([answers[n] for n in names], [example.solution] * len(names), specs, options)\n"
        'print(f"{\'answer\':28} {\'format\':>7} {\'iou\':>7} {\'conf\':>7} {\'total\':>7}")\n'
        "for i, n in enumerate(names):\n"
        '    f, iou, conf = (parts[k][i] for k in ("format", "detection_iou", "detection_confidence"))\n'
        '    print(f"{n:28} {f:7.3f} {iou:7.3f} {conf:7.3f} {total[i]:7.3f}")',
    ),
    (
        "md",
        "Classification and grounding answers (the few-shot classification and LISA settings):",
    ),
    (
        "code",
        'label = "<answer>circle</answer>"\n'
        "for text in [\n"
        '    "<think>round</think> <answer>circle</answer>",\n'
        '    "<think>round</think> <answer> Circle </answer>",\n'
        '    "<think>round</think> <answer>a circle or a square</answer>",\n'
        '    "<think>round</think> <answer></answer>",\n'
        '    "<think>it is a circle</think>",\n'
        "]:\n"
        "    exact = rewards.classification_reward([text], [label], match=\"exact\")[0]\n"
        "    contains = rewards.classification_reward([text], [label], match=\"contains\")[0]\n"
        '    print(f"exact {exact:.0f}  contains {contains:.0f}  {text!r}")\n\n'
        'box = "<answer> (120,40),(560,610) </answer>"\n'
        "for text in [\n"
        '    "<think>t</think> <answer>(120,40),(560,610)</answer>",\n'
        '    "<think>t</think> <answer>[150, 60, 600, 640]</answer>",\n'
        '    "<think>t</think> <answer>(700,700),(900,900)</answer>",\n'
        "]:\n"
        '    iou = rewards.grounding_iou_reward([text], [box], mode="iou")[0]\n'
        '    giou1 = rewards.grounding_iou_reward([text], [box], mode="giou_plus_one")[0]\n'
        '    print(f"iou {iou:.3f}  giou+1 {giou1:.3f}  {text!r}")',
    ),
    ("md", "## IoU matching on a picture"),
    (
        "code",
        "import jax.numpy as jnp\n\n"
        'shown = answers["one missed + a false alarm"]\n'
        "pred = rewards.parse_detection_answer(rewards.extract_answer(shown))\n"
        "truth = rewards.parse_detection_answer(rewards.extract_answer(example.solution), is_solution=True)\n"
        "iou = np.asarray(rewards.pairwise_iou(jnp.asarray(pred.boxes), jnp.asarray(truth.boxes)))\n"
        "matched, matched_iou = rewards.greedy_match(\n"
        "    jnp.asarray(iou),\n"
        "    jnp.asarray(pred.conf),\n"
        "    jnp.ones(len(pred.boxes), bool),\n"
        "    jnp.ones(len(truth.boxes), bool),\n"
        "    IOU_THRESHOLD,\n"
        ")\n"
        "matched, matched_iou = np.asarray(matched), np.asarray(matched_iou)\n"
        'print("IoU [predictions, ground truth]:\\n", iou.round(3))\n'
        "for p in range(len(pred.boxes)):\n"
        "    g = int(iou[p].argmax())\n"
        '    what = f"matches gt {g} (IoU {matched_iou[p]:.3f})" if matched[p] else "unmatched"\n'
        '    print(f"prediction {p} conf {pred.conf[p]:.2f}: {what}")',
    ),
    ("code", DRAW),
    (
        "code",
        "W, H = example.image.size\n"
        "to_px = lambda boxes: np.asarray([from_thousandths(b, W, H) for b in boxes]).reshape(-1, 4)\n"
        "fig, ax = plt.subplots(figsize=(5, 5))\n"
        "ax.imshow(example.image)\n"
        'draw_boxes(ax, to_px(truth.boxes), "green", [f"gt {g}" for g in range(len(truth.boxes))])\n'
        "labels = [\n"
        '    f"p{p} IoU {matched_iou[p]:.2f}" if matched[p] else f"p{p} unmatched"\n'
        "    for p in range(len(pred.boxes))\n"
        "]\n"
        "pred_px = to_px(pred.boxes)\n"
        "for p in range(len(pred.boxes)):\n"
        '    colour = "darkorange" if matched[p] else "red"\n'
        '    draw_boxes(ax, pred_px[p : p + 1], colour, [labels[p]], style="--", label_below=True)\n'
        'ax.set_title("matched (orange) / unmatched (red) predictions, gt (green)")\n'
        'ax.axis("off")\n'
        "plt.show()",
    ),
    ("md", "## How the IoU reward falls as the boxes drift"),
    (
        "code",
        "shifts = list(range(0, 161, 10))\n"
        "drifted = [detection_answer([shifted(b, d) for b in gt], [0.9] * len(gt)) for d in shifts]\n"
        "iou_r, conf_r = rewards.detection_rewards(\n"
        "    drifted, [example.solution] * len(shifts), iou_threshold=IOU_THRESHOLD\n"
        ")\n"
        "plt.figure(figsize=(5, 3))\n"
        'plt.plot(shifts, iou_r, "o-", label="detection_iou")\n'
        'plt.plot(shifts, conf_r, "s-", label="detection_confidence (conf 0.9)")\n'
        'plt.xlabel("shift of every box (thousandths)")\n'
        'plt.ylabel("reward")\n'
        "plt.legend()\n"
        "plt.show()",
    ),
]

NOTEBOOKS = {
    "01_inference.ipynb": INFERENCE,
    "02_rewards_playground.ipynb": REWARDS,
}


def build(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    nb.cells = [_cell(*c) for c in cells]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(NOTEBOOKS[name])) + "\n"


def main():
    for name in NOTEBOOKS:
        path = os.path.join(HERE, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(name))
        print("wrote", path)


if __name__ == "__main__":
    main()
