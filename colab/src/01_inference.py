# ruff: noqa: E402

# %% [markdown]
# # Ask Qwen2-VL about an image and draw its boxes
#
# Loads a Qwen2-VL checkpoint (a Hugging Face folder: `config.json`, `*.safetensors`, tokenizer
# files), asks it to detect a category with the Visual-RFT prompt, decodes greedily, parses the
# `<answer>` and draws the predicted boxes (red) next to the ground truth (green, for the built-in
# synthetic image).
#
# With `CHECKPOINT = ""` it uses the *tiny random* model: the answer is noise and no box parses,
# but every step runs. For a real answer, download e.g. `Qwen/Qwen2-VL-2B-Instruct`
# (`huggingface-cli download Qwen/Qwen2-VL-2B-Instruct --local-dir /content/qwen2vl2b`) or a
# Visual-RFT checkpoint, and use a GPU or TPU runtime.

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
CHECKPOINT = ""  # Hugging Face Qwen2-VL folder; "" = the tiny random model
IMAGE = ""  # your image file; "" = a synthetic shapes image (with ground-truth boxes)
CATEGORY = ""  # what to detect; "" = the synthetic image's category
MAX_NEW_TOKENS = 256  # greedy decoding length
DTYPE = "float32"  # "bfloat16" on GPU/TPU for the 2B/7B models
MAX_PIXELS = 401408  # image processor bound (512 * 28 * 28: at most 512 visual tokens)
SEED = 0

# %% [markdown]
# ## Model and prompt processor

# %%
import jax
import jax.numpy as jnp
import numpy as np

from vrft_jax import hf
from vrft_jax.config_utils import SHIPPED_TOKENIZER_DIR
from vrft_jax.inputs import PromptProcessor

print(jax.devices())
if CHECKPOINT:
    model = hf.load_qwen2_vl(CHECKPOINT, dtype=jnp.dtype(DTYPE))
    has_tokenizer = os.path.isfile(os.path.join(CHECKPOINT, "tokenizer_config.json"))
    tokenizer_dir = CHECKPOINT if has_tokenizer else SHIPPED_TOKENIZER_DIR
else:
    model = hf.random_qwen2_vl("tiny", seed=SEED)
    tokenizer_dir = SHIPPED_TOKENIZER_DIR
processor = PromptProcessor(tokenizer_dir, min_pixels=3136, max_pixels=MAX_PIXELS)
print(model.config.hidden_size, "wide,", model.config.num_hidden_layers, "layers")

# %% [markdown]
# ## The image and the question

# %%
from PIL import Image

from vrft_jax import prompts
from vrft_jax.data.example import from_thousandths
from vrft_jax.data.synthetic import SyntheticShapes

gt_boxes = np.zeros((0, 4))  # pixels; known only for the synthetic image
if IMAGE:
    image = Image.open(IMAGE).convert("RGB")
    category = CATEGORY or "object"
else:
    shapes = SyntheticShapes("detection", "eval", seed=SEED, size=224, length=64)
    example = next(e for e in shapes if len(e.boxes) >= 2)  # one with 2+ targets
    image, category = example.image, CATEGORY or example.category
    if category == example.category:
        gt_boxes = np.asarray(example.pixel_boxes)
question = prompts.build_prompt("detection", category=category)
print(question)

# %% [markdown]
# ## Greedy decoding

# %%
from vrft_jax import sampler

batch = processor.encode_batch([([image], question)])
print({k: v.shape for k, v in batch.items()})
out = sampler.generate(model, **batch, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
completion = processor.decode(out.tokens, out.mask)[0]
print(repr(completion))

# %% [markdown]
# ## Parse the answer and draw the boxes

# %%
from vrft_jax.rewards import extract_answer, parse_detection_answer, score

answer = extract_answer(completion)
parsed = parse_detection_answer(answer)
W, H = image.size
pred_boxes = np.asarray([from_thousandths(b, W, H) for b in parsed.boxes]).reshape(-1, 4)
print("answer:", answer)
print("readable:", parsed.valid, "| boxes (0..1000):", parsed.boxes.tolist())
if not IMAGE and category == example.category:  # the rewards GRPO would give this answer
    specs = (("format", 1.0), ("detection_iou", 1.0), ("detection_confidence", 1.0))
    total, parts = score([completion], [example.solution], specs)
    print("reward", float(total[0]), {k: float(v[0]) for k, v in parts.items()})

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
fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(image)
draw_boxes(ax, gt_boxes, "green", ["gt"] * len(gt_boxes))
pred_labels = [f"{c:.2f}" for c in parsed.conf]
draw_boxes(ax, pred_boxes, "red", pred_labels, style="--", label_below=True)
ax.set_title(f"{category}: {len(pred_boxes)} predicted (red), {len(gt_boxes)} gt (green)")
ax.axis("off")
plt.show()
