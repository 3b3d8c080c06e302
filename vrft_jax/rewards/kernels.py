"""Device-side reward maths in jnp: IoU, greedy matching, detection and grounding scores.

All functions are pure, work on padded arrays, and are jit- and vmap-able, so a reward can run
inside a jitted step. Boxes are (x1, y1, x2, y2); a box with x2 <= x1 or y2 <= y1 has area 0.
Outputs are finite and in range even for padded rows or non-finite inputs.

Shape letters: N completions, P predicted boxes (padded), M ground-truth boxes (padded).
"""

import jax
import jax.numpy as jnp

DENOMINATORS = ("max", "predictions")
GROUNDING_MODES = ("iou", "giou_plus_one")


def _area(box):
    """Area of [..., 4] boxes; inverted boxes count as 0 (the reference has no such check)."""
    return jnp.maximum(box[..., 2] - box[..., 0], 0.0) * jnp.maximum(box[..., 3] - box[..., 1], 0.0)


def _safe_divide(num, den):
    """num / den, and 0 where den <= 0 (two empty boxes have IoU 0, never NaN)."""
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, 1.0), 0.0)


def _intersection(a, b):
    """Intersection area of broadcastable [..., 4] boxes."""
    width = jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0])
    height = jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1])
    return jnp.maximum(width, 0.0) * jnp.maximum(height, 0.0)


def box_iou(a, b):
    """IoU of broadcastable boxes [..., 4] -> [...]; no +1 on widths (as the reference)."""
    inter = _intersection(a, b)
    return _safe_divide(inter, _area(a) + _area(b) - inter)


def pairwise_iou(pred, gt):
    """IoU of every pair: pred [..., P, 4], gt [..., M, 4] -> [..., P, M]."""
    return box_iou(pred[..., :, None, :], gt[..., None, :, :])


def box_giou(a, b):
    """Generalised IoU of [..., 4] boxes in [-1, 1]: IoU - (area(C) - union) / area(C).

    C is the smallest box enclosing both; where C has no area (both boxes empty) GIoU = IoU = 0.
    """
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    lo = jnp.minimum(a[..., :2], b[..., :2])
    hi = jnp.maximum(a[..., 2:], b[..., 2:])
    enclosing = jnp.prod(jnp.maximum(hi - lo, 0.0), axis=-1)
    giou = _safe_divide(inter, union) - _safe_divide(enclosing - union, enclosing)
    return jnp.clip(giou, -1.0, 1.0)


def greedy_match(iou, conf, pred_mask, gt_mask, iou_threshold):
    """Greedy matching of one answer: iou [P, M], conf [P], pred_mask [P], gt_mask [M].

    Predictions are visited by confidence, descending; equal confidences keep their written order
    (stable sort). Each takes the still-unmatched ground-truth box of highest IoU (the first such
    box on ties) and keeps it only if that IoU > iou_threshold (strict); otherwise it is unmatched,
    gets IoU 0, and the box stays free. Not Hungarian (neither is the reference).
    Returns matched bool [P] and matched_iou float32 [P] (0 where unmatched), in written order.
    """
    num_preds = iou.shape[0]
    order = jnp.argsort(-jnp.where(pred_mask, conf, -jnp.inf), stable=True)

    def visit(k, carry):
        gt_free, matched, matched_iou = carry
        p = order[k]
        candidates = jnp.where(gt_free, iou[p], -1.0)
        best = jnp.argmax(candidates)
        best_iou = candidates[best]
        hit = pred_mask[p] & (best_iou > iou_threshold)
        gt_free = gt_free.at[best].set(gt_free[best] & ~hit)
        matched = matched.at[p].set(hit)
        matched_iou = matched_iou.at[p].set(jnp.where(hit, best_iou, 0.0))
        return gt_free, matched, matched_iou

    init = (gt_mask, jnp.zeros((num_preds,), bool), jnp.zeros((num_preds,), jnp.float32))
    _, matched, matched_iou = jax.lax.fori_loop(0, num_preds, visit, init)
    return matched, matched_iou


def detection_scores(
    pred_boxes,
    pred_conf,
    pred_mask,
    gt_boxes,
    gt_mask,
    valid,
    *,
    iou_threshold,
    denominator,
):
    """IoU and confidence rewards of N detection answers -> (iou_reward [N], conf_reward [N]).

    pred_boxes [N, P, 4], pred_conf [N, P] (in [0, 1]), pred_mask [N, P], gt_boxes [N, M, 4],
    gt_mask [N, M], valid [N] (False: unreadable answer or solution -> both rewards 0).
    iou_threshold and denominator: config.reward.iou_threshold and .iou_denominator.
    With n predictions and m ground-truth boxes:
      IoU reward = sum of matched IoUs / max(n, m) (denominator="max", the reference code: missed
        objects lower it) or / n (denominator="predictions", the paper's Eq. 6).
      Confidence reward = mean over predictions of c if matched else 1 - c (paper Eq. 7-8); missed
        ground-truth boxes do not enter it.
      n = 0 (an answer of `[]` / "No Objects"): both rewards are 1 if m = 0, else 0. (Reference: 0.)
    """
    if denominator not in DENOMINATORS:
        raise ValueError(
            f"reward.iou_denominator must be one of {DENOMINATORS}, got {denominator!r}"
        )
    if gt_boxes.shape[-2] == 0:  # argmax needs one column: add a masked-out ground-truth box
        gt_boxes = jnp.zeros(gt_boxes.shape[:-2] + (1, 4), jnp.float32)
        gt_mask = jnp.zeros(gt_mask.shape[:-1] + (1,), bool)
    conf = jnp.clip(jnp.nan_to_num(pred_conf, nan=0.0), 0.0, 1.0)
    iou = pairwise_iou(pred_boxes, gt_boxes)
    match = jax.vmap(greedy_match, in_axes=(0, 0, 0, 0, None))
    matched, matched_iou = match(iou, conf, pred_mask, gt_mask, iou_threshold)
    n = pred_mask.sum(-1).astype(jnp.float32)
    m = gt_mask.sum(-1).astype(jnp.float32)
    empty_answer = jnp.where(m == 0, 1.0, 0.0)

    iou_den = jnp.maximum(n, m) if denominator == "max" else n
    iou_reward = jnp.where(n > 0, _safe_divide(matched_iou.sum(-1), iou_den), empty_answer)
    per_pred = jnp.where(matched, conf, 1.0 - conf) * pred_mask
    conf_reward = jnp.where(n > 0, _safe_divide(per_pred.sum(-1), n), empty_answer)
    return _finish(iou_reward, valid, 1.0), _finish(conf_reward, valid, 1.0)


def grounding_scores(pred_box, gt_box, valid, *, mode):
    """Grounding reward of N single-box answers: pred_box [N, 4], gt_box [N, 4], valid [N] -> [N].

    mode="iou": IoU in [0, 1] (paper metric). mode="giou_plus_one": GIoU + 1 in [0, 2] (the
    reference LISA code; its extra "exact string = 2" rule is implied, as identical boxes give 2).
    """
    if mode not in GROUNDING_MODES:
        raise ValueError(f"reward.grounding must be one of {GROUNDING_MODES}, got {mode!r}")
    if mode == "iou":
        return _finish(box_iou(pred_box, gt_box), valid, 1.0)
    return _finish(box_giou(pred_box, gt_box) + 1.0, valid, 2.0)


def _finish(reward, valid, high):
    """Zero for invalid rows, NaN -> 0, clipped to [0, high], float32."""
    reward = jnp.clip(jnp.nan_to_num(reward, nan=0.0), 0.0, high)
    return jnp.where(valid, reward, 0.0).astype(jnp.float32)


detection_scores_jit = jax.jit(detection_scores, static_argnames=("denominator",))
grounding_scores_jit = jax.jit(grounding_scores, static_argnames=("mode",))
