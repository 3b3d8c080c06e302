"""The run's results: results.json (every evaluation, kept across resumes), the printed table, and
reward_curve.png.

results.json holds {"evaluations": {tag: {"step": s, metric: value, ...}}, "wall_s": seconds}, in
the order the evaluations ran (tags: before, after_sft, step_N, final; eval for a
`total_steps=0` run). It is rewritten (atomically, strict JSON) after each evaluation, so a killed
run loses none. A resumed run first drops the evaluations after its checkpoint's step, as
metrics.jsonl drops its rows, so each evaluation appears once. Only process 0 writes.
"""

import os

import numpy as np

from vrft_jax import jsonio

RESULTS_FILE = "results.json"
CURVE_FILE = "reward_curve.png"
TABLE_WIDTH = 100  # characters; wider tables are split into blocks of columns
# Per-evaluator metrics shown in the table (the rest stay in results.json and eval/<tag>/).
_HEADLINE = ("accuracy", "accuracy_reference", "miou", "accuracy_iou50", "map", "map50")


class Results:
    """results.json of `workdir`: `add(tag, step, metrics)`, `drop_after(step)`, `evaluations`."""

    def __init__(self, workdir: str, *, writer: bool = True):
        self.path = os.path.join(workdir, RESULTS_FILE)
        self.writer = writer
        self.evaluations: dict = {}  # tag -> {"step": s, **metrics}
        self.wall_before = 0.0  # wall time of the earlier sessions of this run
        if os.path.exists(self.path):
            saved = jsonio.read_json(self.path)
            self.evaluations = dict(saved.get("evaluations", {}))
            self.wall_before = float(saved.get("wall_s") or 0.0)

    def has(self, tag: str, step: int) -> bool:
        return self.evaluations.get(tag, {}).get("step") == step

    def drop_after(self, step: int) -> None:
        """Forgets evaluations after `step` (a resumed run redoes them); rewrites only if any."""
        kept = {t: e for t, e in self.evaluations.items() if e.get("step", 0) <= step}
        if len(kept) != len(self.evaluations):
            self.evaluations = kept
            self._write(self.wall_before)

    def add(self, tag: str, step: int, metrics: dict, wall_s: float) -> None:
        """Records one evaluation (replacing one of the same tag) and rewrites the file."""
        self.evaluations.pop(tag, None)
        self.evaluations[tag] = {"step": int(step), **metrics}
        self._write(self.wall_before + wall_s)

    def _write(self, wall_s: float) -> None:
        if self.writer:
            jsonio.write_json(self.path, {"evaluations": self.evaluations, "wall_s": wall_s})

    def metrics_of(self, tag: str) -> dict:
        """The metrics of one evaluation (without its step; null values back as NaN)."""
        out = {}
        for k, v in self.evaluations[tag].items():
            if k not in ("step", jsonio.NONFINITE_FIELD):
                out[k] = float("nan") if v is None else v
        return out


# ---- The printed table -------------------------------------------------------------------------


def _column_title(name: str) -> str:
    """ "reward/format" -> "greedy:format" (greedy decoding), "sampled/format" -> "sampled:format"
    (expected reward over sampled completions), "classification/accuracy" -> "accuracy"."""
    group, _, metric = name.partition("/")
    if group in ("reward", "sampled"):
        return ("greedy:" if group == "reward" else "sampled:") + metric
    return metric or name


def _table_columns(evaluations: dict) -> list[str]:
    """Metrics every evaluation has: headline evaluator metrics, then rewards."""
    rows = list(evaluations.values())
    names = [k for k in rows[0] if all(k in e for e in rows)]
    headline = [k for k in names if k.partition("/")[2] in _HEADLINE]
    rewards = [k for k in names if k.partition("/")[0] in ("reward", "sampled")]
    return headline + rewards


def _cell(value) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.3f}"


def results_table(evaluations: dict, width: int = TABLE_WIDTH) -> str:
    """Rows = evaluations (tag and step), columns = headline metrics and rewards; columns that do
    not fit `width` characters continue in a second block below (same rows)."""
    if not evaluations:
        return ""
    names = _table_columns(evaluations)
    labels = [f"{tag} (step {e.get('step', '?')})" for tag, e in evaluations.items()]
    first = max(len(x) for x in labels) + 1
    cols = [(n, max(len(_column_title(n)), 6) + 2) for n in names]
    blocks, block, used = [], [], first
    for name, w in cols:
        if block and used + w > width:
            blocks.append(block)
            block, used = [], first
        block.append((name, w))
        used += w
    blocks.append(block)
    lines = []
    for block in blocks:
        if lines:
            lines.append("")
        lines.append("".ljust(first) + "".join(_column_title(n).rjust(w) for n, w in block))
        for label, e in zip(labels, evaluations.values()):
            lines.append(label.ljust(first) + "".join(_cell(e[n]).rjust(w) for n, w in block))
    return "\n".join(lines)


# ---- The reward curve --------------------------------------------------------------------------


def train_reward_curve(workdir: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, sampled train reward) from the whole metrics.jsonl (every session of the run)."""
    by_step = {}
    for row in jsonio.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        value = row.get("reward/total_mean")
        if value is not None and "loss" in row:  # a train row, not an eval row
            by_step[row["step"]] = value  # a step logged twice (old files): the last one
    steps = np.array(sorted(by_step), dtype=np.float64)
    return steps, np.array([by_step[s] for s in sorted(by_step)], dtype=np.float64)


def plot_reward_curve(workdir: str, evaluations: dict) -> str | None:
    """reward_curve.png: the sampled train reward per step (and its running mean) with the greedy
    held-out reward of each evaluation as a dashed line; None when no step was logged."""
    x, y = train_reward_curve(workdir)
    if not len(x):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.plot(x, y, alpha=0.35, color="C0", label="train reward, sampled (per step)")
    k = max(1, len(y) // 10)
    if k > 1:
        smooth = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(x[k - 1 :], smooth, color="C0", label=f"train reward, mean of {k} steps")
    for i, (tag, e) in enumerate(evaluations.items()):
        value = e.get("reward/total_mean")
        if value is None:
            continue
        label = f"held-out greedy: {tag} (step {e.get('step', '?')}) {value:.3f}"
        ax.axhline(value, ls="--", lw=1.2, color=f"C{i + 1}", label=label)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean total reward")
    ax.set_title("solid: sampled train reward    dashed: greedy held-out reward", fontsize=9)
    # The legend sits beside the plot, so no label covers the curve or another label.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path = os.path.join(workdir, CURVE_FILE)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(workdir: str, evaluations: dict, wall_s: float) -> None:
    """Prints the held-out table and draws reward_curve.png (process 0 only)."""
    table = results_table(evaluations)
    if table:
        print(f"\nHeld-out results ({RESULTS_FILE}; all metrics in eval/<tag>/), "
              f"wall time {wall_s:.0f} s:\n{table}\n")  # fmt: skip
    plot_reward_curve(workdir, evaluations)
