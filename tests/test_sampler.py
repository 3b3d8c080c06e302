"""The rollout sampler on a tiny Qwen2-VL: transformers' greedy generate, cache decode vs the full
forward, teacher-forced log-probs, independent stops, no recompiles inside the buckets. The first
two also run on a tiny Qwen2.5-VL (window attention: 56 px windows, so the test images hold
several windows, partial ones included).

Every test shares one Sampler (the one `generate` builds for the model's buckets) so the prefill and
decode programs compile once per shape.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_hf
from flax import nnx
from numerics import assert_close_to_scale

from vrft_jax import hf
from vrft_jax.generation import sampler
from vrft_jax.models import random_qwen2_vl

BUCKETS = dict(prompt_buckets=(64,), patch_buckets=(256,), image_buckets=(4,))
GRIDS = [[(1, 4, 6)], [(1, 6, 4), (1, 4, 4)], [(1, 4, 4)]]
PAD = tiny_hf.PAD
G, STEPS = 2, 6  # one prefill shape for every test: G samples per prompt, C new tokens


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(our model, torch model or None) with identical weights."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return tiny_hf.rescale_params_(random_qwen2_vl("tiny", seed=0, **BUCKETS)), None
    path = str(tmp_path_factory.mktemp("tiny_hf"))
    torch_model = tiny_hf.make_tiny_hf(path)
    return hf.load_qwen2_vl(path, **BUCKETS), torch_model


@pytest.fixture(scope="module")
def models_2_5(tmp_path_factory):
    """(our model, torch model) of the tiny Qwen2.5-VL family with identical weights."""
    pytest.importorskip("torch")
    path = str(tmp_path_factory.mktemp("tiny_hf_2_5"))
    torch_model = tiny_hf.make_tiny_hf(path, seed=5, family="qwen2_5_vl", window_size=56)
    return hf.load_model(path, **BUCKETS), torch_model


@pytest.fixture(params=["qwen2_vl", "qwen2_5_vl"])
def family_models(request):
    return request.getfixturevalue("models" if request.param == "qwen2_vl" else "models_2_5")


def _batch(seed, grids, text):
    """Left-padded image prompts and their packed images; also each prompt's own images."""
    rng = np.random.default_rng(seed)
    rows = [tiny_hf.image_prompt(rng, a, g, b) for g, (a, b) in zip(grids, text)]
    ids, mask = tiny_hf.left_pad(rows)
    per_prompt = [tiny_hf.random_pixels(rng, g) for g in grids]
    pv = np.concatenate([p for p, _ in per_prompt])
    grid = np.concatenate([g for _, g in per_prompt])
    return ids, mask, pv, grid, per_prompt


def _sampler(model):
    return sampler.get_sampler(nnx.graphdef(model), model.config, batch_buckets=(4,), **BUCKETS)


def test_greedy_equals_transformers_generate(family_models):
    model, torch_model = family_models
    if torch_model is None:
        pytest.skip("torch not installed")
    import torch

    ids, mask, pv, grid, _ = _batch(0, GRIDS, [(3, 4), (2, 2), (5, 1)])
    steps = STEPS

    def hf_generate(eos):
        with torch.no_grad():
            out = torch_model.generate(
                input_ids=torch.as_tensor(ids),
                attention_mask=torch.as_tensor(mask),
                pixel_values=torch.as_tensor(pv),
                image_grid_thw=torch.as_tensor(grid),
                mm_token_type_ids=torch.as_tensor((ids == tiny_hf.IMAGE).astype(np.int64)),
                max_new_tokens=steps,
                do_sample=False,
                eos_token_id=list(eos),
                pad_token_id=PAD,
            )
        return out[:, ids.shape[1] :].numpy()

    # G greedy samples of a prompt are identical; rows i*G .. i*G+G-1 belong to prompt i.
    kw = dict(max_new_tokens=steps, num_samples=G)
    ours = sampler.generate(model, ids, mask, pv, grid, **kw)
    want = np.repeat(hf_generate((151645, 151643)), G, axis=0)
    assert ours.tokens.shape == (3 * G, steps) and ours.tokens.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(ours.tokens)[:, : want.shape[1]], want)

    # Stop ids that the greedy rows emit (row 0's third token): both stop there and pad after.
    eos = (int(want[0, 2]), 151645)
    ours = sampler.generate(model, ids, mask, pv, grid, eos_token_ids=eos, **kw)
    want = np.repeat(hf_generate(eos), G, axis=0)
    tokens, tmask = np.asarray(ours.tokens), np.asarray(ours.mask)
    np.testing.assert_array_equal(tokens[:, : want.shape[1]], want)
    assert np.all(tokens[:, want.shape[1] :] == PAD)
    # mask: True up to and including the stop token.
    for row, m in zip(tokens, tmask):
        stop = np.flatnonzero(np.isin(row, eos))
        n = stop[0] + 1 if stop.size else steps
        assert m.tolist() == [True] * n + [False] * (steps - n)


def test_cache_decode_and_logprobs_match_full_forward(family_models):
    """Step-by-step decode (the while_loop's body) gives the full forward's logits at every step;
    the returned log-probs equal the teacher-forced log-probs of the full forward."""
    model, _ = family_models
    s = _sampler(model)
    graphdef, params = nnx.split(model)
    ids, mask, pv, grid, per_prompt = _batch(1, GRIDS, [(3, 4), (2, 2), (5, 1)])
    g, steps, kw = G, STEPS, dict(temperature=1.0, top_k=50, top_p=0.95)
    out = s(params, ids, mask, pv, grid, max_new_tokens=steps, num_samples=g, rng=3, **kw)
    n = ids.shape[0] * g
    assert out.tokens.shape == out.mask.shape == out.logprobs.shape == (n, steps)
    assert out.logprobs.dtype == jnp.float32 and out.mask.dtype == jnp.bool_

    state = s.start(params, ids, mask, pv, grid, max_new_tokens=steps, num_samples=g, rng=3)
    # Forked, not re-prefilled: the G rows of a prompt share one cache.
    k = np.asarray(state.cache["k"])
    np.testing.assert_array_equal(k[:, 0], k[:, 1])
    step_logits = []
    rule = sampler.SamplingRule(**kw)
    eos = sampler.eos_array(sampler.EOS_TOKEN_IDS)
    for _ in range(steps):
        step_logits.append(np.asarray(state.logits[:n]))
        state = s.step(graphdef, params, state, eos, rule=rule, pad_token_id=PAD)
    np.testing.assert_array_equal(np.asarray(state.tokens[:n]), np.asarray(out.tokens))

    # Full forward over prompt + completion, each prompt's images repeated for its G rows.
    pids, pmask = s.prepare(ids, mask, pv, grid)[:2]
    plen = pids.shape[1]
    rep = lambda a: np.repeat(np.asarray(a)[: ids.shape[0]], g, axis=0)  # noqa: E731
    full_ids = np.concatenate([rep(pids), np.asarray(out.tokens)], axis=1)
    full_mask = np.concatenate([rep(pmask), np.asarray(out.mask)], axis=1)
    rows_pv = [p for p, _ in per_prompt for _ in range(g)]
    rows_grid = [gr for _, gr in per_prompt for _ in range(g)]
    forward = jax.jit(lambda p, *a: nnx.merge(graphdef, p).forward(*a))
    ref = forward(params, full_ids, full_mask, np.concatenate(rows_pv), np.concatenate(rows_grid))
    ref = np.asarray(ref)
    want = ref[:, plen - 1 : plen - 1 + steps]  # logits that predict each completion token
    got = np.stack(step_logits, axis=1)
    live = np.asarray(out.mask)
    err = np.abs(got - want)[live].max() / np.abs(want[live]).max()
    print(f"cache decode vs full forward: rel err {err:.2e}")
    assert err <= 1e-5

    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(want), axis=-1))
    want_lp = np.take_along_axis(logp, np.asarray(out.tokens)[..., None], axis=-1)[..., 0]
    want_lp = np.where(live, want_lp, 0.0)
    # The log-probs carry the logits' rounding (ulps of max |z|, see test_sampler_layouts.py):
    # the cache decode and the full forward sum in another order.
    ulps = assert_close_to_scale(out.logprobs, want_lp, 16, scale=np.abs(want[live]).max())
    print(f"log-probs vs teacher-forced: max abs err {ulps:.1f} ulps of max |logit|")


def test_rows_stop_independently_and_loop_exits_early(models):
    model, _ = models
    ids, mask, pv, grid, _ = _batch(0, GRIDS, [(3, 4), (2, 2), (5, 1)])
    steps, kw = STEPS, dict(max_new_tokens=STEPS, num_samples=G)
    free = sampler.generate(model, ids, mask, pv, grid, eos_token_ids=(1,), **kw)
    free_tokens = np.asarray(free.tokens)
    assert free.steps == steps and np.asarray(free.mask).all()

    # Prompt 1's first greedy token as the only stop id: its rows (2, 3) stop after one token,
    # the others go on.
    eos = int(free_tokens[2, 0])
    out = sampler.generate(model, ids, mask, pv, grid, eos_token_ids=(eos,), **kw)
    tokens, tmask, logp = np.asarray(out.tokens), np.asarray(out.mask), np.asarray(out.logprobs)
    for r in (2, 3):
        assert tokens[r, 0] == eos and np.all(tokens[r, 1:] == PAD)
        assert tmask[r].tolist() == [True] + [False] * (steps - 1)
        assert np.all(logp[r, 1:] == 0) and logp[r, 0] <= 0
    others = [r for r in (0, 1, 4, 5) if eos not in free_tokens[r]]
    assert others, "the chosen stop id also appears in every other row"
    for r in others:
        np.testing.assert_array_equal(tokens[r], free_tokens[r])
        assert tmask[r].all() and np.all(logp[r] < 0)

    # Every row's first token is a stop id: one decode step, then the loop exits.
    first = tuple(int(t) for t in free_tokens[:, 0])
    out = sampler.generate(model, ids, mask, pv, grid, eos_token_ids=first, **kw)
    assert out.steps == 1
    assert np.asarray(out.mask)[:, 0].all() and not np.asarray(out.mask)[:, 1:].any()


def test_no_recompile_across_batches_inside_buckets(models):
    model, _ = models
    s = _sampler(model)
    graphdef, params = nnx.split(model)
    kw = dict(max_new_tokens=STEPS, num_samples=G, temperature=1.0, top_k=50, top_p=0.95)
    a = _batch(1, GRIDS, [(3, 4), (2, 2), (5, 1)])
    assert s.prepare(*a[:4])[-1].tolist() == [True, True, True, False]  # 3 prompts -> bucket 4
    unpadded = sampler.Sampler(graphdef, model.config, **BUCKETS)  # no batch_buckets: no dummies
    assert unpadded.prepare(*a[:4])[-1].tolist() == [True, True, True]
    s(params, *a[:4], rng=0, **kw)
    before = s.compile_count()
    assert before >= 2  # prefill + decode compiled at least once
    # Other prompt count (4 -> same bucket), lengths, image sizes and new parameter values.
    grids = [[(1, 2, 2)], [(1, 4, 4)], [(1, 6, 6)], [(1, 2, 4)]]
    b = _batch(7, grids, [(9, 1), (1, 1), (4, 3), (2, 6)])
    params2 = jax.tree.map(lambda x: x * 1.01, params)
    out = s(params2, *b[:4], rng=1, **kw)
    assert out.tokens.shape == (4 * G, STEPS)
    assert s.compile_count() == before


def test_prepare_checks_image_tokens_against_the_images(models):
    """Host padding refuses prompts whose <|image_pad|> tokens do not match the given images."""
    model, _ = models
    ids, mask, pv, grid, per_prompt = _batch(2, GRIDS, [(3, 4), (2, 2), (5, 1)])
    s = _sampler(model)
    assert s.prepare(ids, mask, pv, grid)[2] is not None
    with pytest.raises(ValueError, match="no pixel_values"):
        s.prepare(ids, mask)
    with pytest.raises(ValueError, match="image_grid_thw gives"):
        s.prepare(ids, mask, *per_prompt[0])  # the first prompt's images for all three prompts
