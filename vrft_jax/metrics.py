"""Metrics to JSON lines and TensorBoard, sampled completions, and wall-clock time splits.

Files in the workdir (written by process 0 only):
  metrics.jsonl  one {"step": s, name: value, ...} per write, flushed at once (survives a crash)
  samples.jsonl  one {"step": s, "prompt": ..., "completion": ..., "rewards": ...} per completion
  tb/            TensorBoard event files (tensorboardX; no TensorFlow needed)
Files are opened in append mode, so a resumed run continues them; `MetricsWriter(workdir,
resume_step=s)` first drops the rows after step `s` (written by a run killed after its last
checkpoint), so every step appears once. JSON is strict (`strict_json`): a non-finite float is
written as null and named in the row's "nonfinite" field ({"loss": "NaN"}), so a diverging run
stays visible and every JSON parser reads the files.
"""

import collections
import contextlib
import os
import time

import jax

from vrft_jax.jsonio import dumps, read_jsonl, strict_json, to_python, truncate_jsonl

__all__ = ["MetricsWriter", "Timer", "dumps", "read_jsonl", "strict_json", "to_python",
           "truncate_jsonl"]  # fmt: skip


class MetricsWriter:
    """`write(step, {name: scalar})` and `write_samples(step, rows)` into `workdir`.

    resume_step: the step the run continues from; rows after it are dropped first (None: keep all).
    """

    def __init__(self, workdir, enabled=None, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = workdir
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        import tensorboardX  # imported here so non-writing processes never touch it

        metrics_path = os.path.join(workdir, "metrics.jsonl")
        samples_path = os.path.join(workdir, "samples.jsonl")
        if resume_step is not None:
            for path in (metrics_path, samples_path):
                truncate_jsonl(path, resume_step)
        self._metrics = open(metrics_path, "a")
        self._samples = open(samples_path, "a")
        self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step, metrics):
        """Append one step's metrics (a flat dict of scalars; arrays are logged to JSON only)."""
        if not self.enabled:
            return
        values = {name: to_python(v) for name, v in metrics.items()}
        self._metrics.write(dumps({"step": int(step), **values}) + "\n")
        self._metrics.flush()
        for name, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(name, v, int(step))
        self._tb.flush()

    def write_samples(self, step, rows):
        """rows: dicts with "prompt", "completion", "rewards" ({name: value}) and any extras."""
        if not self.enabled:
            return
        lines = []
        for row in rows:
            row = {k: to_python(v) for k, v in row.items()}
            if isinstance(row.get("rewards"), dict):
                row["rewards"] = {k: to_python(v) for k, v in row["rewards"].items()}
            self._samples.write(dumps({"step": int(step), **row}) + "\n")
            lines.append(f"**rewards** {row.get('rewards')}\n\n```\n{row.get('completion')}\n```")
        self._samples.flush()
        self._tb.add_text("samples", "\n\n---\n\n".join(lines), int(step))
        self._tb.flush()

    def close(self):
        if self.enabled:
            self._metrics.close()
            self._samples.close()
            self._tb.close()
            self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Timer:
    """Accumulates wall time per named phase: `with timer("rollout"): ...`; `timer.splits()`.

    JAX dispatches asynchronously: block on the phase's results (e.g. jax.block_until_ready)
    inside the `with` block, or the time lands in whichever phase waits for them next.
    """

    def __init__(self):
        self.totals = collections.defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - start

    def splits(self, prefix="time/", reset=True):
        """{prefix + name: seconds} since the last reset."""
        out = {prefix + name: seconds for name, seconds in self.totals.items()}
        if reset:
            self.totals.clear()
        return out
