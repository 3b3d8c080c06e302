"""The GPU machines lack ml_collections, pycocotools, tensorflow_datasets and grain: the model, the
sampler and the benchmark scripts that run there (bench/gpu_check.sh) must import without them.
(train_step.py and grpo_step.py need ml_collections and grain only inside main(); gpu_check.sh
installs them there from carried wheels, bench/wheels.sh.)"""

import os
import pathlib
import subprocess
import sys

from import_blocker import blocking_prelude

REPO = pathlib.Path(__file__).resolve().parents[1]

BLOCKED = ("ml_collections", "pycocotools", "tensorflow_datasets", "grain", "lvis", "tensorflow")
SCRIPT = (
    blocking_prelude(*BLOCKED)
    + """
import vrft_jax.hf, vrft_jax.sampler, vrft_jax.buckets, vrft_jax.models  # noqa
loaded = []
for name in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location(name, f"bench/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines main(); the __main__ guard keeps it from running
    assert callable(module.main), name
    loaded.append(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("imported", " ".join(loaded))
"""
)


def test_gpu_benchmarks_import_without_data_and_eval_packages():
    benches = [
        "rollout",
        "vision_layouts",
        "decode_cost",
        "train_step",
        "grpo_step",
        "summary",
        "lora_decode",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = ""  # one CPU device is enough to import
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *benches],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["imported", *benches]
