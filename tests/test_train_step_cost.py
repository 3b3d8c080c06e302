"""bench/train_step_cost.py: loop-aware matmul flops, the largest-array census, the step's jaxpr."""

import importlib.util
import pathlib
import types

import jax
import jax.numpy as jnp
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "train_step_cost", REPO / "bench/train_step_cost.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_matmul_flops_multiplies_scan_bodies_by_their_length(bench):
    L, M, D = 5, 8, 16

    def f(w, x):
        y, _ = jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)
        return y.sum()

    w = jax.ShapeDtypeStruct((L, D, D), jnp.float32)
    x = jax.ShapeDtypeStruct((M, D), jnp.float32)
    forward = bench.matmul_flops(jax.make_jaxpr(f)(w, x).jaxpr)
    assert forward == L * 2 * M * D * D
    # Gradient wrt both: the forward dot plus two transposed dots per layer.
    both = bench.matmul_flops(jax.make_jaxpr(jax.grad(f, (0, 1)))(w, x).jaxpr)
    assert both == 3 * forward
    # XLA's cost analysis counts the loop body once: this is why the bench counts on the jaxpr.
    xla = jax.jit(f).lower(w, x).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    assert xla["flops"] < forward / 2


def test_largest_arrays_names_the_biggest_result(bench):
    def f(x):
        big = jnp.outer(x, x)  # [N, N]
        return jnp.tanh(big).sum(axis=0)

    text = jax.jit(f).lower(jax.ShapeDtypeStruct((512,), jnp.float32)).compile().as_text()
    rows = bench.largest_arrays(text, 3)
    size, key, _, count = rows[0]
    assert key == "f32[512,512]" and size == 512 * 512 * 4 and count >= 1


def args(**kw):
    base = dict(
        preset="tiny", prompts=2, G=2, completion=8, micro_batch_size=None, remat=None,
        vision_remat=None, master_dtype=None, compute_dtype=None, beta=None, freeze_vision=False,
    )  # fmt: skip
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_step_flops_count_every_micro_batch(bench):
    """The GRPO update's flops barely change with the micro-batch count (only the scan's
    trip count does), and exceed 6 x LLM params x sequence tokens."""
    pytest.importorskip("ml_collections")
    flops, batches = [], []
    for micro in (4, 1):
        c = bench.step_config(args(micro_batch_size=micro, freeze_vision=True))
        b = bench.build(c, P=64, side=224)
        flops.append(bench.matmul_flops(jax.make_jaxpr(b.update)(b.state, b.batch).jaxpr))
        batches.append(b.batch)
    assert c.grpo.beta > 0 and "ref_logps" in batches[0] and b.ref_bytes > 0
    assert batches[0]["pixel_values"].shape == (2, 256, b.model_config.patch_dim)  # slots layout
    assert batches[0]["completion_ids"].shape == (4, 8)
    assert abs(flops[1] / flops[0] - 1) < 0.02, flops
    llm = sum(x.size for x in jax.tree.leaves(b.state["params"]["language_model"]["layers"]))
    assert flops[0] > 6 * llm * 4 * (64 + 8)


def test_remat_shrinks_the_saved_residuals(bench):
    pytest.importorskip("ml_collections")
    got = {}
    for remat in ("none", "full"):
        b = bench.build(bench.step_config(args(remat=remat, vision_remat=remat)), P=64, side=56)
        saved = bench.saved_for_backward(b, 4)
        if saved is None:
            pytest.skip("jax._src.ad_checkpoint.saved_residuals is missing in this jax")
        got[remat] = {k: sum(row[0] for row in v) for k, v in saved.items()}
    assert got["full"]["vision"] < got["none"]["vision"] / 2  # only each layer's input is kept
    assert 0 < got["full"]["micro"] < got["none"]["micro"]
