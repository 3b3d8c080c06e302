# ruff: noqa: E402

# %% [markdown]
# # A short GRPO run with reward curves
#
# Runs Visual-RFT's GRPO loop (`vrft_jax.train.run`, the same code `python -m vrft_jax.main`
# runs) on the demo config: synthetic shapes, the rewards of the config's `rewards` list, G
# samples per prompt. Then plots the rewards, the loss and the KL from `WORKDIR/metrics.jsonl`
# and shows a few sampled completions from `WORKDIR/samples.jsonl`.
#
# With `CHECKPOINT = ""` the policy is the *tiny random* model, so rewards stay near 0: the
# run shows the machinery, not learning. With a Qwen2-VL-2B folder and a GPU/TPU runtime, raise
# `STEPS` and watch the format and IoU rewards climb. The same run from a terminal:
# `python -m vrft_jax.main --config configs/demo.py --workdir /tmp/vrft_demo`.

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
# Parameters (None keeps the value of configs/demo.py)
CHECKPOINT = ""  # Hugging Face Qwen2-VL folder; "" = the tiny random model
WORKDIR = ""  # run folder; "" = a new temporary folder (an existing one resumes)
STEPS = None  # GRPO optimizer steps
SFT_WARMUP_STEPS = None  # supervised steps first, to learn the answer format
BATCH_SIZE = None  # prompts per step (B)
G = None  # samples per prompt
MAX_NEW_TOKENS = None  # completion length while training and evaluating
NUM_EVAL_EXAMPLES = None  # held-out examples, evaluated before and after training
SEED = 42

# %% [markdown]
# ## The config
#
# `configs/demo.py` with the parameters above. Every field is described in `configs/base.py`;
# the resolved config is written to `WORKDIR/config.json`.

# %%
import tempfile

from configs import demo
from vrft_jax import config_utils

config = demo.get_config()
overrides = {
    "seed": SEED,
    "total_steps": STEPS,
    "sft.warmup_steps": SFT_WARMUP_STEPS,
    "input.batch_size": BATCH_SIZE,
    "grpo.G": G,
    "sampler.max_new_tokens": MAX_NEW_TOKENS,
    "eval.max_new_tokens": MAX_NEW_TOKENS,
    "data.num_eval_examples": NUM_EVAL_EXAMPLES,
}
if CHECKPOINT:  # a real model: float32 master weights, bf16 compute (use a GPU or TPU runtime)
    overrides.update({"model_init": CHECKPOINT, "model.compute_dtype": "bfloat16"})
for dotted, value in overrides.items():
    if value is not None:
        *parents, name = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[name] = value
config.lock()  # from here a misspelled field fails instead of adding a new one
config_utils.check_paths(config)

WORKDIR = WORKDIR or tempfile.mkdtemp(prefix="vrft_grpo_")
os.makedirs(WORKDIR, exist_ok=True)
config_utils.write_config_json(config, WORKDIR)
print("workdir:", WORKDIR)
print(config.rewards, "| B =", config.input.batch_size, "| G =", config.grpo.G)

# %% [markdown]
# ## Train

# %%
import time

import jax

from vrft_jax import train

print(jax.devices())
start = time.time()
final = train.run(config, WORKDIR)
print(f"{time.time() - start:.0f} s")

# %% [markdown]
# ## Reward curves from metrics.jsonl

# %%
import io
import json

import matplotlib.pyplot as plt
from IPython.display import Image, display

with open(os.path.join(WORKDIR, "metrics.jsonl")) as f:
    history = [json.loads(line) for line in f if line.strip()]
train_rows = [h for h in history if "reward/total_mean" in h and "loss" in h]
print("steps logged:", len(train_rows))
reward_keys = sorted(k for k in train_rows[0] if k.startswith("reward/") and not k.endswith("_std"))
steps = [h["step"] for h in train_rows]

fig, (ax_r, ax_l) = plt.subplots(1, 2, figsize=(11, 3.5))
for key in reward_keys:
    ax_r.plot(steps, [h[key] for h in train_rows], "o-", label=key.removeprefix("reward/"))
ax_r.set_xlabel("step")
ax_r.set_ylabel("mean reward over the N = B x G samples")
ax_r.legend(fontsize=8)
for key in ("loss", "kl"):
    if key in train_rows[0]:
        ax_l.plot(steps, [h[key] for h in train_rows], "o-", label=key)
ax_l.set_xlabel("step")
ax_l.legend()
plt.tight_layout()
# As a PNG: the trainer switched matplotlib to a file backend to write reward_curve.png.
png = io.BytesIO()
fig.savefig(png, format="png", dpi=90)
plt.close(fig)
display(Image(png.getvalue()))

# %% [markdown]
# ## A few sampled completions and the final evaluation

# %%
samples_path = os.path.join(WORKDIR, "samples.jsonl")
if os.path.exists(samples_path):
    with open(samples_path) as f:
        samples = [json.loads(line) for line in f if line.strip()]
    for row in samples[-3:]:
        print(f"step {row['step']} rewards {row.get('rewards')}")
        print("   ", repr(row.get("completion"))[:300])
print(json.dumps({k: v for k, v in final.items() if isinstance(v, (int, float))}, indent=1)[:2000])
