"""Learning test (a trimmed demo): from one shared SFT warm start, GRPO raises the held-out
expected reward (sampled completions on eval-split prompts, what GRPO optimises) of the synthetic
shapes task, and the same run with the policy gradient's sign flipped does not, so a sign or
advantage bug fails the test.

Both arms use the same compiled programs, data order and sampling seeds; the flipped arm trains on
negated rewards (rewards.score wrapped for its GRPO steps only, not its evaluation), which negates
every group advantage.
"""

import jax
import pytest
from flax import nnx

from configs import demo
from vrft_jax import evaluation, model_setup, optim, rewards, sft, sharding, steps, train
from vrft_jax.data import make_source
from vrft_jax.data.pipeline import Pipeline
from vrft_jax.inputs import PromptProcessor
from vrft_jax.metrics import Timer

GRPO_STEPS = 20
MARGIN = 0.1  # held-out sampled total reward (format + accuracy, 0..2); measured gain 0.26


def make_config():
    c = demo.get_config()
    c.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    c.total_steps = GRPO_STEPS
    # The shape task and lr this test was measured with (the demo now runs the colour task,
    # whose format the warm-up learns more slowly: 38 steps leave its sampled reward at 0.01).
    c.data.synthetic_task, c.sft.think, c.optim.lr = "classification", "one shape", 1e-3
    c.sft.warmup_steps = 38  # sampled completions have the full format only sometimes
    c.data.num_eval_examples = 24
    c.eval.batch_size = 16
    return c


# TODO(issue 14 (d)): also bfloat16 compute. Measured with float32 masters + bf16 compute (2
# loaded cores): warm start 0.010, GRPO 0.010, flipped 0.000 -- the SFT warm-up reaches a far
# weaker start than in float32 (0.208); not yet understood, so the bf16 arm is not enabled.
@pytest.fixture(scope="module", params=["float32"])
def setup(request):
    """The shared warm start (float32 master weights, compute in the param's dtype)."""
    config = make_config()
    config.model.compute_dtype = request.param
    processor = PromptProcessor.from_config(config)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    model = model_setup.build_model(config)
    graphdef, params_state = nnx.split(model, nnx.Param)
    tx, schedule = optim.make_optimizer(config.optim, GRPO_STEPS, params_state)
    state, shardings = steps.make_train_state(params_state, tx, mesh, ())
    fns = steps.TrainSteps(graphdef, config, tx, schedule, shardings)
    state = sft.sft_warmup(config, processor, graphdef, params_state, mesh, (), state, fns)
    warm_params = jax.device_get(state["params"])
    generate = model_setup.make_generate_fn(graphdef, model.config, config)
    return config, processor, mesh, generate, params_state, tx, shardings, fns, warm_params


def grpo_arm(setup, sign, workdir, monkeypatch):
    """GRPO_STEPS steps from the warm start on rewards times `sign`; held-out metrics after."""
    config, processor, mesh, generate, params_state, tx, shardings, fns, warm_params = setup
    state, _ = steps.make_train_state(params_state, tx, mesh, ())
    state["params"] = jax.device_put(warm_params, shardings["params"])
    source = make_source(config.data, "train", config.seed)
    it = iter(Pipeline(source, batch_size=config.input.batch_size, seed=config.seed,
                       num_epochs=None, num_workers=1, drop_remainder=True))  # fmt: skip
    timer = Timer()
    score = rewards.score

    def signed_score(*args, **kwargs):
        total, per_reward = score(*args, **kwargs)
        return sign * total, per_reward

    with monkeypatch.context() as patch:
        patch.setattr(rewards, "score", signed_score)  # rollout.py calls rewards.score
        for step in range(GRPO_STEPS):
            rng = jax.random.fold_in(jax.random.key(config.seed), step)
            state, _, _ = train.grpo_step(
                config, state, next(it), processor, fns, generate, None, mesh, rng, timer
            )
    return evaluation.run_evals(config, str(workdir), processor, generate(state["params"]), "arm")


def test_grpo_beats_flipped_sign_from_same_warm_start(setup, tmp_path, monkeypatch):
    config, processor, _, generate, _, _, _, _, warm_params = setup
    key = "sampled/total_mean"
    start = evaluation.run_evals(
        config, str(tmp_path), processor, generate(jax.device_put(warm_params)), "start"
    )[key]
    up = grpo_arm(setup, 1.0, tmp_path, monkeypatch)[key]
    down = grpo_arm(setup, -1.0, tmp_path, monkeypatch)[key]
    print(f"held-out sampled reward: warm start {start:.3f}, GRPO {up:.3f}, flipped {down:.3f}")
    # Measured (2 loaded cores): warm start 0.219, GRPO 0.479, flipped sign 0.000.
    assert up >= start + MARGIN
    assert up >= down + 2 * MARGIN
