"""Verifiable rewards: host parsing (`parsing`), jnp kernels (`kernels`), public rewards and the
config registry. See `scores` for the semantics and docs/REWARDS.md for every difference from the
reference."""

from vrft_jax.rewards.kernels import (
    box_giou,
    box_iou,
    detection_scores,
    greedy_match,
    grounding_scores,
    pairwise_iou,
)
from vrft_jax.rewards.parsing import (
    DetectionBatch,
    extract_answer,
    parse_detection_answer,
    parse_detection_batch,
    parse_grounding_answer,
)
from vrft_jax.rewards.registry import REWARD_NAMES, score
from vrft_jax.rewards.scores import (
    classification_reward,
    detection_confidence_reward,
    detection_iou_reward,
    detection_rewards,
    format_reward,
    grounding_iou_reward,
)

__all__ = [
    "REWARD_NAMES",
    "DetectionBatch",
    "box_giou",
    "box_iou",
    "classification_reward",
    "detection_confidence_reward",
    "detection_iou_reward",
    "detection_rewards",
    "detection_scores",
    "extract_answer",
    "format_reward",
    "greedy_match",
    "grounding_iou_reward",
    "grounding_scores",
    "pairwise_iou",
    "parse_detection_answer",
    "parse_detection_batch",
    "parse_grounding_answer",
    "score",
]
