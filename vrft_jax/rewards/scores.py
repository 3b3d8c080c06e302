"""The public rewards: lists of N strings in, float32 numpy [N] out.

Their options (match, iou_threshold, denominator, mode) are required: the trainer passes the
config's `reward` block (registry.score); configs/base.py holds the defaults.

Box rewards take the frame the completions are written in (`frame`, vrft_jax.box_frames) and, for
"absolute_pixels" (Qwen2.5-VL), `image_sizes` [N, 2]: each completion's image (W, H) as the
processor resized it. Answers are converted to the solutions' 0..1000 frame before any IoU, so a
reward means the same for every model family.

Completions are the decoded model outputs; solutions are the dataset's solution strings, e.g.
`<answer>[{'Position': [64, 0, 950, 411], 'Confidence': 1}]</answer>`, `<answer>daisy</answer>`,
`<answer>(120,40),(560,610)</answer>`. No reward ever raises on model text or returns NaN.
Unlike the reference, no math-verify pre-check runs first: in the reference it read the y1 of the
first box as "the answer" and gave full IoU and confidence reward whenever y1 matched.
"""

import numpy as np

from vrft_jax import box_frames
from vrft_jax.rewards import kernels, parsing

CLASSIFICATION_MATCHES = ("exact", "contains")


def format_reward(completions) -> np.ndarray:
    """1 if the stripped completion is `<think>...</think>` then `<answer>...</answer>` and nothing
    else (newlines allowed anywhere), else 0. float32 [N]."""
    return np.asarray([float(parsing.has_format(c)) for c in completions], np.float32)


def classification_reward(completions, solutions, *, match) -> np.ndarray:
    """1 if the answer names the label, else 0. float32 [N].

    Both sides are normalised (lowercase, trimmed, whitespace, `_` and `-` dropped).
    match="exact": equal after normalisation. match="contains": the answer contains the label
    (still rewards "pug or beagle"; kept for comparison). An empty answer, or a missing `<answer>`
    tag, is never correct. Reference: a substring test in either direction, so an empty answer
    scored 1 and models collapsed to `<answer></answer>`; the label in `<think>` also scored 1.
    """
    if match not in CLASSIFICATION_MATCHES:
        raise ValueError(
            f"reward.classification_match must be one of {CLASSIFICATION_MATCHES}, got {match!r}"
        )
    rewards = []
    for completion, solution in zip(completions, solutions, strict=True):
        answer = parsing.normalize_label(parsing.extract_answer(completion))
        label = parsing.normalize_label(parsing.solution_answer(solution))
        if not answer or not label:
            rewards.append(0.0)
        elif match == "exact":
            rewards.append(float(answer == label))
        else:
            rewards.append(float(label in answer))
    return np.asarray(rewards, np.float32)


def detection_rewards(
    completions,
    solutions,
    *,
    iou_threshold,
    denominator,
    frame=box_frames.RELATIVE,
    image_sizes=None,
):
    """Both detection rewards from one parse and one matching: (iou [N], confidence [N]) float32.

    See `kernels.detection_scores` for the formulas and `parsing.parse_detection_answer` for what
    an answer may look like; frame / image_sizes as in the module docstring.
    """
    completions, solutions = list(completions), list(solutions)
    if len(completions) != len(solutions):
        raise ValueError(f"{len(completions)} completions but {len(solutions)} solutions")
    batch = parsing.parse_detection_batch(
        completions, solutions, frame=frame, image_sizes=image_sizes
    )
    iou, conf = kernels.detection_scores_jit(
        *batch, iou_threshold=float(iou_threshold), denominator=denominator
    )
    n = len(completions)
    return np.asarray(iou, np.float32)[:n], np.asarray(conf, np.float32)[:n]


def detection_iou_reward(
    completions,
    solutions,
    *,
    iou_threshold,
    denominator,
    frame=box_frames.RELATIVE,
    image_sizes=None,
):
    """Sum of matched IoUs / max(#predictions, #ground truth) (denominator="max", reference code)
    or / #predictions (denominator="predictions", the paper). Greedy matching by confidence, a
    match needs IoU > iou_threshold. `[]` / "No Objects" scores 1 when there is no ground truth.
    float32 [N] in [0, 1]. frame / image_sizes as in the module docstring."""
    return detection_rewards(
        completions, solutions, iou_threshold=iou_threshold, denominator=denominator,
        frame=frame, image_sizes=image_sizes,
    )[0]  # fmt: skip


def detection_confidence_reward(
    completions, solutions, *, iou_threshold, frame=box_frames.RELATIVE, image_sizes=None
):
    """Mean over predictions of c if matched (IoU > iou_threshold) else 1 - c; confidences are
    clipped to [0, 1] and a NaN/Infinity confidence makes the answer invalid (0) instead of a NaN
    reward (reference bug). `[]` / "No Objects" scores 1 when there is no ground truth.
    float32 [N] in [0, 1]. frame / image_sizes as in the module docstring."""
    # The confidence reward does not depend on the IoU reward's denominator.
    any_denominator = kernels.DENOMINATORS[0]
    return detection_rewards(
        completions, solutions, iou_threshold=iou_threshold, denominator=any_denominator,
        frame=frame, image_sizes=image_sizes,
    )[1]  # fmt: skip


def grounding_iou_reward(
    completions, solutions, *, mode, frame=box_frames.RELATIVE, image_sizes=None
):
    """IoU of the answer's first box with the solution box (mode="iou", [0, 1]), or GIoU + 1
    (mode="giou_plus_one", the reference LISA reward, [0, 2]). Boxes are `(x1,y1),(x2,y2)` or
    `[x1, y1, x2, y2]`, the answer's in `frame`, the solution's in 0..1000. float32 [N]."""
    completions, solutions = list(completions), list(solutions)
    if len(completions) != len(solutions):
        raise ValueError(f"{len(completions)} completions but {len(solutions)} solutions")
    sizes = parsing.frame_sizes(frame, image_sizes, len(completions))
    preds = [
        parsing.parse_grounding_answer(parsing.extract_answer(c), frame=frame, size=size)
        for c, size in zip(completions, sizes, strict=True)
    ]
    gts = [parsing.parse_grounding_answer(parsing.solution_answer(s)) for s in solutions]
    rows = parsing.bucket(len(preds), minimum=8)
    pred_box, _, _, pred_valid = parsing.pad_boxes(preds, rows, 1)
    gt_box, _, _, gt_valid = parsing.pad_boxes(gts, rows, 1)
    reward = kernels.grounding_scores_jit(
        pred_box[:, 0], gt_box[:, 0], pred_valid & gt_valid, mode=mode
    )
    return np.asarray(reward, np.float32)[: len(preds)]
