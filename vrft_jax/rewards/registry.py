"""Reward registry: the config's `rewards` (name, weight) pairs -> a weighted total for the trainer.

Names: "format", "classification", "detection_iou", "detection_confidence", "grounding_iou".
Options come from the config's `reward` block: iou_threshold, iou_denominator,
classification_match, grounding. The total is the weighted sum (the reference sums unweighted:
all weights 1.0); each reward is also returned on its own so its mean can be logged.
"""

import math

import numpy as np

from vrft_jax import box_frames
from vrft_jax.rewards import scores

REWARD_NAMES = (
    "format",
    "classification",
    "detection_iou",
    "detection_confidence",
    "grounding_iou",
)


def default_options():
    """configs/base.py's `reward` block: the options `score` uses when given none.

    Read from the config (the one place defaults live), so it needs the repository's configs/ on
    sys.path and ml_collections; library users without them pass `options` themselves.
    """
    try:
        from configs.base import get_config
    except ImportError as e:
        raise ImportError(
            "rewards.score without options reads configs/base.py's `reward` block, which did not "
            f"import ({e}); pass options (e.g. config.reward, or a dict with iou_threshold, "
            "iou_denominator, classification_match, grounding)"
        ) from e
    return get_config().reward


def _compute(name, completions, solutions, options, cache, boxes_in):
    if name == "format":
        return scores.format_reward(completions)
    if name == "classification":
        match = options["classification_match"]
        return scores.classification_reward(completions, solutions, match=match)
    if name == "grounding_iou":
        mode = options["grounding"]
        return scores.grounding_iou_reward(completions, solutions, mode=mode, **boxes_in)
    if "detection" not in cache:  # IoU and confidence share one parse and one matching
        cache["detection"] = scores.detection_rewards(
            completions,
            solutions,
            iou_threshold=options["iou_threshold"],
            denominator=options["iou_denominator"],
            **boxes_in,
        )
    return cache["detection"][0 if name == "detection_iou" else 1]


def validate_specs(reward_specs):
    """Check (name, weight) pairs; raises ValueError naming the config key `rewards`."""
    specs = [tuple(spec) for spec in reward_specs]
    if not specs:
        raise ValueError("config `rewards` is empty; give (name, weight) pairs")
    for spec in specs:
        if len(spec) != 2:
            raise ValueError(f"config `rewards`: {spec!r} is not a (name, weight) pair")
        name, weight = spec
        if name not in REWARD_NAMES:
            raise ValueError(f"config `rewards`: unknown reward {name!r}; known: {REWARD_NAMES}")
        if not isinstance(weight, int | float) or not math.isfinite(weight):
            raise ValueError(f"config `rewards`: weight of {name!r} must be a finite number")
    names = [name for name, _ in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"config `rewards`: a reward is listed twice in {names}")
    return specs


def score(
    completions,
    solutions,
    reward_specs,
    options=None,
    *,
    frame=box_frames.RELATIVE,
    image_sizes=None,
):
    """Score N completions: (total float32 [N], {name: float32 [N]} per reward, unweighted).

    reward_specs: (name, weight) pairs, e.g. config.rewards. options: config.reward, or a dict
    with the keys the listed rewards read (iou_threshold, iou_denominator, classification_match,
    grounding); None = configs/base.py's (`default_options`).
    frame: the box frame the completions are written in (the model's, vrft_jax.box_frames);
    image_sizes [N, 2]: each completion's image (W, H) as the processor resized it, needed for
    "absolute_pixels". The solutions are 0..1000.
    """
    specs = validate_specs(reward_specs)
    if options is None:
        options = default_options()
    completions, solutions = list(completions), list(solutions)
    if len(completions) != len(solutions):
        raise ValueError(f"{len(completions)} completions but {len(solutions)} solutions")
    total = np.zeros((len(completions),), np.float32)
    per_reward, cache = {}, {}
    boxes_in = {"frame": frame, "image_sizes": image_sizes}  # how the box answers are written
    for name, weight in specs:
        per_reward[name] = _compute(name, completions, solutions, options, cache, boxes_in)
        total += np.float32(weight) * per_reward[name]
    return total, per_reward
