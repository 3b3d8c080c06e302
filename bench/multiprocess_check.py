r"""Multi-process check on one machine: 2 processes x 4 CPU devices must match 1 process x 8.

  python bench/multiprocess_check.py [--job grpo|toy] [--steps 2] [--out DIR]

It starts the workers on this machine, each with JAX_PLATFORMS=cpu:
  - "single": one process with 8 CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8);
  - "multi" process 0 and 1: 4 CPU devices each, joined by `jax.distributed.initialize(
    "127.0.0.1:PORT", num_processes=2, process_id=i)` after selecting the gloo CPU collectives,
so both runs see the same 8-device global mesh. Each run writes its per-step metrics and its final
parameters to DIR/<run>/; the driver then compares them and prints the largest differences. Exit
status 0 when they match within float32 tolerance (RTOL, ATOL below).

Jobs:
  grpo: `vrft_jax.train.run(config, workdir)` on configs/demo.py with GRPO_OVERRIDES: the real
        multi-host path (data pipeline, global batches, sharded parameters, SFT warm-up, sampler
        rows split over the hosts, rewards on gathered completions, reference log-probs, updates,
        checkpoints, final evaluation) in two launches: steps 1..steps-1, then a restart that
        resumes from the workdir's checkpoint (rebuilding the reference by rerunning the warm-up)
        and runs the last step. The metrics of every step and the final checkpoint's parameters
        are compared. The first launch then runs `steps` supervised steps of a QLoRA run
        (LORA_OVERRIDES: int8 base, rank-4 adapters) in its own workdir, compared the same way.
  toy:  a few SGD steps of a sharded linear model (the distributed runtime alone).

Cost: compiling dominates, so the single-process launches share one persistent compile cache
(JAX_COMPILATION_CACHE_DIR, default DIR/jit_cache; every program cached) and the restart compiles
nothing. The two-process launches compile for themselves (see `_start`). The QLoRA run shares
the first launch's process: start-up, the distributed runtime and the sampler's programs.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tolerances. The two runs compile the same partitioned programs; only the order of float32 sums
# across devices may differ (gloo's all-reduce over 8 ranks vs the in-process one), by a few ulps
# of the summed terms' scale.
# - Metrics: means over N*C tokens and norms over all gradients; reordered sums of K terms differ
#   by ~log2(K) ulps (about 20 ulps = 2.4e-6 relative for K ~ 1e6): RTOL = 1e-4 relative leaves
#   a factor 40, and values that are exactly 0 in both runs (no reward) must stay 0 (METRIC_ATOL).
# - logprob_gap_*: |sampler - trainer| log-prob differences, i.e. rounding noise itself (~1e-7):
#   equal to within a few ulps of the log-probs compared (|log p| <= log V = 12): LOGP_ATOL.
# - kl (and the loss, beta * kl here as the advantages are 0): a token mean of exp(d) - d - 1 for
#   d = ref - policy log-prob, computed near 1 (exp(d) ~ 1): rounding of a few ulps of 1 per token,
#   whatever the KL's size (1e-7 at step 1, where the policy is the reference up to bfloat16):
#   KL_ATOL = 16 ulps of 1.
# - grad_norm: at step 1 the policy is its bfloat16 reference up to rounding (d ~ 5e-4), and the
#   only gradient is the KL's, proportional to 1 - exp(-d): the log-probs' rounding (~1e-7, the
#   logprob_gap metrics) relative to d, ~2e-4 (measured 1.6e-4): GRAD_RTOL = 1e-3.
# - Parameters after AdamW: a step is lr * m / (sqrt(v) + eps), about lr * sign(g) per element
#   on the first step, so reordering noise dg in a gradient element moves the parameter by
#   lr * dg / (|g| + eps): noticeable only where |g| is within a few ulps of 0, where it can be a
#   good part of a step. ATOL = 1e-4 is 1% of one step at the warm-up's lr 1e-2 (measured after
#   the warm-up and GRPO step 1: max 4.9e-5 on 113 of ~10M elements; 0 elsewhere within RTOL).
RTOL, ATOL = 1e-4, 1e-4
METRIC_ATOL = 1e-9
LOGP_ATOL = 16 * float(np.finfo(np.float32).eps) * 12.0  # 16 ulps of a log-prob of 12: 2.3e-5
KL_ATOL = 16 * float(np.finfo(np.float32).eps)  # 1.9e-6
GRAD_RTOL = 1e-3

# Config overrides of configs/demo.py for the GRPO job: tiny shapes, the demo's settings otherwise
# (mu 1, AdamW with clipping). The random model earns no reward, so the GRPO gradients are 0 and
# only the SFT warm-up step moves the weights. Giving the GRPO steps signal takes a far longer
# warm-up: measured 2026-12-02, after 20 warm-up steps at lr 1e-2 (or 8 at 5e-2, sampling at
# temperature 0.7) every sampled completion still scored 0 (fragments like "<greenanswer</>");
# the demo warms up for 70 steps, minutes here. Not beta 0.04 with its bfloat16 reference: the KL
# gradient is then at the rounding floor (policy = reference up to bfloat16, grad norm 2.5e-5 over
# 9.9M weights), where AdamW's normalisation turns reordering noise into whole steps (measured:
# parameters 1.7e-3 apart after two steps at lr 1e-3), which tests AdamW, not the multi-host path.
GRPO_OVERRIDES = {
    "model.preset": "tiny",
    "input.batch_size": 8,  # B = 8 prompts: one per device
    "grpo.G": 2,  # N = 16 sequences, 2 rows per device
    "grpo.micro_batch_size": 8,  # two micro-batches: gradient accumulation across them
    # lr 1e-3 (the demo's; the paper's 1e-6 moves float32 weights by less than the comparison's
    # tolerance, so a wrong update would pass unseen).
    "optim.lr": 1e-3,
    "sampler.max_new_tokens": 8,  # C = 8: the SFT target below is 8 tokens with <|im_end|>
    "sft.think": "",  # SFT target "<answer>SHAPE</answer>"
    "eval.max_new_tokens": 8,
    "eval.batch_size": 8,
    "eval.num_samples": 0,  # greedy evaluation only (sampled eval: two more programs to compile)
    "eval_at_start": False,
    "data.num_eval_examples": 8,
    "sample_every": 1,  # the completions' texts: decoded from the gathered rows
    "sft.warmup_steps": 1,  # a supervised step first: moves the weights and compiles the SFT step
    "ckpt.every": 1,
    "mesh": (("data", 2), ("fsdp", -1), ("tensor", 1)),  # batch over both axes: 8 ways
}
# QLoRA (vrft_jax/lora.py): int8 base of the decoder's projections, sharded like the weights
# (per-channel scales on the output axes), rank-4 adapters; supervised steps, the one LoRA
# program whose gradients are not 0 here (GRPO's are, without reward; the LoRA GRPO update
# differs from it only in the loss). Step 1 moves B only (A's gradient is 0 while B = 0), step 2
# A too, so both are compared; the final evaluation decodes with the adapters merged into the
# sharded weights. One launch, no restart: a LoRA GRPO update and a restart would each add a
# two-process compile (~40 s); the LoRA restart is checked bit for bit in one process
# (tests/test_lora_run.py).
LORA_WORKDIR = "workdir_lora"
LORA_OVERRIDES = {
    **GRPO_OVERRIDES,
    "trainer": "sft",
    "sft.warmup_steps": 0,
    "lora.rank": 4,
    "lora.alpha": 8.0,
    "lora.quantize": "int8",
}


# ---- Workers ------------------------------------------------------------------------------------


def _join(coordinator: str, process_id: int, num_processes: int) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def _gather(tree):
    """A pytree of (possibly multi-process) jax.Arrays -> numpy arrays, equal on every process."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def toy_job(steps: int, out: str) -> None:
    """SGD on a linear model y = x @ w: batch split over all 8 devices, w split over "fsdp"."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "fsdp"))
    rng = np.random.default_rng(0)  # the same host data on every process
    x_host = rng.normal(size=(64, 16)).astype(np.float32)
    y_host = rng.normal(size=(64, 4)).astype(np.float32)
    w_host = rng.normal(size=(16, 4)).astype(np.float32)

    def put(array, spec):
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    x, y = put(x_host, P(("data", "fsdp"))), put(y_host, P(("data", "fsdp")))
    w = put(w_host, P("fsdp"))

    @jax.jit
    def step(w, x, y):
        loss, grad = jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
        return w - 0.1 * grad, loss

    metrics = []
    for i in range(steps):
        w, loss = step(w, x, y)
        metrics.append({"step": i + 1, "loss": float(loss)})
    _write(out, metrics, {"w": _gather(w)})


def grpo_job(steps: int, out: str, lora_steps: int = 0) -> None:
    """`train.run` on the demo config with GRPO_OVERRIDES for `steps` steps, in `out/workdir`;
    then, when lora_steps > 0, LORA_OVERRIDES (QLoRA) for lora_steps in `out/workdir_lora`.

    Called twice by the driver (steps - 1, then steps): the second call resumes from the
    workdir's checkpoint. The metrics are read back from workdir/metrics.jsonl and the final
    parameters from the last checkpoint (`_checkpoint_params`): the check relies only on the
    trainer's files. The LoRA run shares the first launch's process (start-up, the distributed
    runtime and the sampler's compiled programs: its merged weights have the full run's shapes).
    """
    sys.path.insert(0, REPO)
    from configs import demo
    from vrft_jax import train

    runs = [("workdir", GRPO_OVERRIDES, steps)]
    if lora_steps:
        runs.append((LORA_WORKDIR, LORA_OVERRIDES, lora_steps))
    for workdir, overrides, total in runs:
        config = demo.get_config()
        config.total_steps = total
        for dotted, value in overrides.items():
            _set_field(config, dotted, value)
        config.lock()
        train.run(config, os.path.join(out, workdir))


def _set_field(config, dotted: str, value) -> None:
    *parents, name = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    if name not in node:
        raise KeyError(f"config has no field {dotted!r}")
    node[name] = value


def _checkpoint_params(workdir: str) -> dict:
    """{path: numpy array} of `params` in the latest checkpoint of workdir (any device count)."""
    import jax
    import orbax.checkpoint as ocp

    root = os.path.join(workdir, "checkpoints")
    steps = [int(d) for d in os.listdir(root) if d.isdigit()]
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {root}")
    path = os.path.join(root, str(max(steps)), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    return {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_leaves_with_path(state["params"])
    }


def _metrics_jsonl(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _load_run(run_dir: str, workdir: str = "workdir"):
    """(metrics, {path: params array}) of a toy run (metrics.json, params.npz) or a grpo run (its
    `workdir`)."""
    workdir = os.path.join(run_dir, workdir)
    if os.path.isdir(workdir):
        return _metrics_jsonl(workdir), _checkpoint_params(workdir)
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    with np.load(os.path.join(run_dir, "params.npz")) as z:
        return metrics, {k: z[k] for k in z.files}


def _write(out: str, metrics, params) -> None:
    import jax

    if jax.process_index() != 0:
        return
    flat = {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    np.savez(os.path.join(out, "params.npz"), **flat)
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
    print(f"wrote {out}: {len(metrics)} steps, {len(flat)} parameter arrays", flush=True)


def worker(args) -> None:
    if args.coordinator:
        _join(args.coordinator, args.process_id, args.num_processes)
    import jax

    print(
        f"process {jax.process_index()}/{jax.process_count()}: "
        f"{jax.local_device_count()} local, {jax.device_count()} global devices",
        flush=True,
    )
    if args.job == "grpo":
        grpo_job(args.steps, args.out, args.lora_steps)
    else:
        toy_job(args.steps, args.out)


# ---- Driver -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(job, steps, out, devices, coordinator="", process_id=0, log=None, lora_steps=0):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        # A loaded machine may start a collective's processes more than gloo's default 30 s
        # apart (first use of each device group): wait up to 10 minutes instead.
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
        "--xla_cpu_collective_timeout_seconds=600",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        # Cache every program, however fast it compiled: the restart then compiles nothing.
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(out), "jit_cache"))
    if coordinator:
        # Not for the two-process runs: only process 0 writes the cache and process 1 misses it,
        # so on a restart process 0 runs ahead by process 1's compile time and the first
        # collective's gloo set-up gives up after its fixed 30 s (measured: 7 s vs 41 s for the
        # warm-up step). Both processes compile, in step. (jax_share_binary_between_hosts, where
        # process 0 hands each binary to process 1, hung in the toy job on jax 0.10.2: process 1
        # waited for a binary that never came and process 0 timed out in gloo's set-up.)
        env.pop("JAX_COMPILATION_CACHE_DIR")
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--job", job]
    cmd += ["--steps", str(steps), "--out", out, "--lora_steps", str(lora_steps)]
    if coordinator:
        cmd += ["--coordinator", coordinator, "--process_id", str(process_id)]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def _wait(procs, logs, timeout_s):
    deadline = time.time() + timeout_s
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            raise RuntimeError(f"{name} did not finish in {timeout_s}s; see {logs[name]}") from None
        if proc.returncode != 0:
            for p in procs.values():
                p.kill()
            with open(logs[name], encoding="utf-8") as f:
                tail = f.read()[-4000:]
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")


def run_check(job: str = "grpo", steps: int = 2, out: str | None = None, timeout_s: int = 900):
    """Runs the single- and two-process workers and compares them -> a report dict.

    grpo runs in two launches each (steps - 1 steps, then a resumed restart to `steps`); toy in
    one. report: {"job", "steps", "metrics": {key: max abs diff}, "params": {"max_abs_diff",
    "max_rel_diff", "num_arrays", "names"}, "single_metrics": [...], "multi_metrics": [...],
    "match": bool, "seconds": {...}, "out"}; grpo also "lora": the QLoRA run's compare() (`steps`
    supervised steps in the first launch; its "match" is part of the report's).
    """
    out = out or tempfile.mkdtemp(prefix="vrft_multiprocess_")
    runs = {"single": os.path.join(out, "single"), "multi": os.path.join(out, "multi")}
    for d in runs.values():
        os.makedirs(d, exist_ok=True)
    launches = [steps - 1, steps] if job == "grpo" and steps > 1 else [steps]
    seconds = {}
    # The runs one after the other: on a small machine they would otherwise fight for cores.
    for run in ("single", "multi"):
        for k, total in enumerate(launches):
            tag = run if k == 0 else f"{run}_resume"
            lora = steps if job == "grpo" and k == 0 else 0  # the QLoRA run: first launch
            start = time.time()
            if run == "single":
                logs = {tag: os.path.join(out, f"{tag}.log")}
                files = {tag: open(logs[tag], "w", encoding="utf-8")}  # noqa: SIM115
                procs = {tag: _start(job, total, runs[run], 8, log=files[tag], lora_steps=lora)}
            else:
                coordinator = f"127.0.0.1:{_free_port()}"
                names = [f"{tag}_p{i}" for i in range(2)]
                logs = {n: os.path.join(out, f"{n}.log") for n in names}
                files = {n: open(logs[n], "w", encoding="utf-8") for n in names}  # noqa: SIM115
                procs = {
                    n: _start(job, total, runs[run], 4, coordinator, i, files[n], lora)
                    for i, n in enumerate(names)
                }
            try:
                _wait(procs, logs, timeout_s)
            finally:
                for f in files.values():
                    f.close()
            seconds[tag] = round(time.time() - start, 1)
    report = compare(runs["single"], runs["multi"])
    if job == "grpo":
        report["lora"] = compare(runs["single"], runs["multi"], LORA_WORKDIR)
        report["match"] = report["match"] and report["lora"]["match"]
    report.update(job=job, steps=steps, seconds=seconds, out=out)
    return report


def compare(single_dir: str, multi_dir: str, workdir: str = "workdir") -> dict:
    """Per-step metric and final-parameter differences between two run folders (grpo: between
    their `workdir`s)."""
    single, p_single = _load_run(single_dir, workdir)
    multi, p_multi = _load_run(multi_dir, workdir)
    metric_diffs, ok = {}, len(single) == len(multi) and len(single) > 0
    for a, b in zip(single, multi):
        for key, value in a.items():
            if not isinstance(value, (int, float)) or _is_timing(key):
                continue
            other = b.get(key)
            if not isinstance(other, (int, float)):
                ok = False
                metric_diffs[key] = float("inf")
                continue
            diff = abs(float(value) - float(other))
            metric_diffs[key] = max(metric_diffs.get(key, 0.0), diff)
            atol = _metric_atol(key)
            rtol = GRAD_RTOL if key == "grad_norm" else RTOL
            ok &= bool(np.isclose(value, other, rtol=rtol, atol=atol))
    ok &= sorted(p_single) == sorted(p_multi)
    max_abs = max_rel = 0.0
    for name in p_single:
        if name not in p_multi:
            continue
        a, b = p_single[name].astype(np.float64), p_multi[name].astype(np.float64)
        if a.shape != b.shape:
            ok = False
            continue
        d = np.abs(a - b)
        max_abs = max(max_abs, float(d.max(initial=0.0)))
        max_rel = max(max_rel, float((d / (np.abs(a) + ATOL)).max(initial=0.0)))
        ok &= bool(np.allclose(a, b, rtol=RTOL, atol=ATOL))
    return {
        "match": bool(ok),
        "metrics": metric_diffs,
        "params": {
            "max_abs_diff": max_abs,
            "max_rel_diff": max_rel,
            "num_arrays": len(p_single),
            "names": sorted(p_single),
        },
        "single_metrics": single,
        "multi_metrics": multi,
    }


def _metric_atol(key: str) -> float:
    if key.startswith("logprob_gap"):
        return LOGP_ATOL
    if key in ("kl", "loss", "pg_loss"):
        return KL_ATOL
    return METRIC_ATOL


def _is_timing(key: str) -> bool:
    """Wall-clock metrics, which differ between any two runs."""
    return key.startswith("time/") or key in ("step_time", "tokens_per_s", "wall_s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", choices=("grpo", "toy"), default="grpo")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default="", help="folder for the runs and logs (default: a temp)")
    parser.add_argument("--timeout_s", type=int, default=900)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--coordinator", default="", help=argparse.SUPPRESS)
    parser.add_argument("--process_id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--num_processes", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--lora_steps", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    report = run_check(args.job, args.steps, args.out or None, args.timeout_s)
    for name, part in (("", report), ("lora ", report.get("lora"))):
        if part is None:
            continue
        for a, b in zip(part["single_metrics"], part["multi_metrics"]):
            if "loss" not in a:
                continue
            keys = ("loss", "reward/total_mean", "reward/total_std", "entropy", "grad_norm")
            shown = ", ".join(f"{k} {a[k]:.6g} vs {b.get(k)}" for k in keys if k in a)
            print(f"{name}step {a.get('step')}: {shown}")
        params = {k: v for k, v in part["params"].items() if k != "names"}
        print(
            name
            + json.dumps({"match": part["match"], "metrics": part["metrics"], "params": params})
        )
    print(f"seconds: {report['seconds']}; runs and logs in {report['out']}")
    print("MATCH" if report["match"] else "MISMATCH")
    return 0 if report["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
