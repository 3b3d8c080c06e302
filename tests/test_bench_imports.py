"""The GPU machines lack ml_collections, pycocotools, tensorflow_datasets and grain: the model, the
sampler and the benchmark scripts that run there (bench/gpu_check.sh) must import without them."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = """
import importlib.abc, importlib.util, sys
BLOCKED = ("ml_collections", "pycocotools", "tensorflow_datasets", "grain", "lvis", "tensorflow")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):
    return None if name.split(".")[0] in BLOCKED else _find_spec(name, package)
importlib.util.find_spec = find_spec
sys.meta_path.insert(0, Block())

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


def test_gpu_benchmarks_import_without_data_and_eval_packages():
    benches = ["rollout", "vision_layouts"]
    if (REPO / "bench" / "decode_cost.py").exists():
        benches.append("decode_cost")
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
