"""The jnp greedy matching and detection scores equal a plain-Python loop on many random cases.

Boxes sit on a coarse integer grid so IoU ties and exact 0.5 thresholds happen often; confidences
come from a few values so confidence ties are common; some cases have no ground truth or no
predictions. IoU is computed in float32 on both sides (integer areas are exact in float32), so
the comparison can be exact. One jitted call scores every case.
"""

import jax
import numpy as np

from vrft_jax.rewards import kernels

NUM_CASES = 1500
P, M = 8, 6
THRESHOLD = 0.5


def python_iou(a, b) -> np.float32:
    inter_w = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    inter_h = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = inter_w * inter_h
    area_a = max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
    area_b = max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
    union = area_a + area_b - inter
    return np.float32(inter) / np.float32(union) if union > 0 else np.float32(0.0)


def python_rewards(preds, confs, gts, denominator):
    """The rules of the issue as a plain loop: (matched flags, matched IoUs, IoU, confidence)."""
    order = sorted(range(len(preds)), key=lambda i: -confs[i])  # Python's sort is stable
    free = [True] * len(gts)
    matched, matched_iou = [False] * len(preds), [0.0] * len(preds)
    for p in order:
        best, best_iou = -1, np.float32(-1.0)
        for g, gt in enumerate(gts):
            if free[g]:
                value = python_iou(preds[p], gt)
                if value > best_iou:  # strict: the first of equal IoUs wins
                    best, best_iou = g, value
        if best >= 0 and best_iou > THRESHOLD:
            free[best] = False
            matched[p], matched_iou[p] = True, float(best_iou)
    n, m = len(preds), len(gts)
    if n == 0:
        return matched, matched_iou, float(m == 0), float(m == 0)
    den = max(n, m) if denominator == "max" else n
    iou = sum(matched_iou) / den
    conf = sum(c if hit else 1.0 - c for c, hit in zip(confs, matched)) / n
    return matched, matched_iou, iou, conf


def random_cases(seed):
    rng = np.random.default_rng(seed)
    num_preds = rng.integers(0, P + 1, NUM_CASES)
    num_gts = rng.integers(0, M + 1, NUM_CASES)
    num_preds[:50], num_gts[50:100] = 0, 0  # make sure both empty cases are well covered

    def boxes(k):
        corner = rng.integers(0, 8, (k, 2)) * 100
        size = rng.integers(1, 5, (k, 2)) * 100
        return np.concatenate([corner, corner + size], -1).astype(np.float32)

    pred_boxes = np.zeros((NUM_CASES, P, 4), np.float32)
    pred_conf = np.zeros((NUM_CASES, P), np.float32)
    gt_boxes = np.zeros((NUM_CASES, M, 4), np.float32)
    pred_mask = np.arange(P) < num_preds[:, None]
    gt_mask = np.arange(M) < num_gts[:, None]
    for i in range(NUM_CASES):
        gt_boxes[i] = boxes(M)
        # Half the predictions are jittered copies of ground truth so many matches happen.
        pred_boxes[i] = boxes(P)
        copies = rng.random(P) < 0.5
        source = gt_boxes[i, rng.integers(0, M, P)] + rng.integers(-1, 2, (P, 4)) * 25
        pred_boxes[i] = np.where(copies[:, None], source, pred_boxes[i])
        pred_conf[i] = rng.choice([0.0, 0.25, 0.5, 0.5, 0.9, 1.0], P)
    return pred_boxes, pred_conf, pred_mask, gt_boxes, gt_mask, num_preds, num_gts


def test_greedy_matching_equals_python_loop():
    pred_boxes, pred_conf, pred_mask, gt_boxes, gt_mask, num_preds, num_gts = random_cases(0)
    valid = np.ones((NUM_CASES,), bool)

    @jax.jit
    def run(*arrays):
        iou = kernels.pairwise_iou(arrays[0], arrays[3])
        match = jax.vmap(kernels.greedy_match, in_axes=(0, 0, 0, 0, None))
        matched, matched_iou = match(iou, arrays[1], arrays[2], arrays[4], THRESHOLD)
        scores = {
            d: kernels.detection_scores(*arrays, iou_threshold=THRESHOLD, denominator=d)
            for d in kernels.DENOMINATORS
        }
        exactly_half = ((iou == 0.5) & arrays[2][:, :, None] & arrays[4][:, None, :]).sum()
        return matched, matched_iou, scores, exactly_half

    arrays = (pred_boxes, pred_conf, pred_mask, gt_boxes, gt_mask, valid)
    matched, matched_iou, scores, exactly_half = jax.device_get(run(*arrays))

    num_matches = 0
    for i in range(NUM_CASES):
        n, m = num_preds[i], num_gts[i]
        preds, confs, gts = pred_boxes[i, :n].tolist(), pred_conf[i, :n].tolist(), gt_boxes[i, :m]
        for denominator in kernels.DENOMINATORS:
            want = python_rewards(preds, confs, gts.tolist(), denominator)
            got_iou, got_conf = scores[denominator][0][i], scores[denominator][1][i]
            np.testing.assert_allclose([got_iou, got_conf], want[2:], atol=2e-6, err_msg=f"{i}")
        assert matched[i, :n].tolist() == want[0], i
        assert not matched[i, n:].any()
        np.testing.assert_array_equal(matched_iou[i, :n], np.float32(want[1]), err_msg=f"{i}")
        num_matches += sum(want[0])
    # The random cases really exercise matching, thresholds and ties.
    assert num_matches > NUM_CASES // 2
    assert exactly_half > 0 and (matched_iou == 0.5).sum() == 0  # IoU 0.5 never matches


def test_kernels_are_finite_on_nonfinite_inputs():
    boxes = np.array([[[0, 0, 10, 10], [np.nan, 0, np.inf, 5]]], np.float32)
    conf = np.array([[np.nan, 2.0]], np.float32)
    mask = np.ones((1, 2), bool)
    kw = dict(iou_threshold=THRESHOLD, denominator="max")
    iou, conf_r = kernels.detection_scores_jit(
        boxes, conf, mask, boxes[:, :1], mask[:, :1], np.ones((1,), bool), **kw
    )
    assert np.isfinite(iou).all() and np.isfinite(conf_r).all()
    assert 0 <= float(iou[0]) <= 1 and 0 <= float(conf_r[0]) <= 1
    # No ground-truth column at all (M = 0) still works.
    empty = np.zeros((1, 0, 4), np.float32)
    iou, conf_r = kernels.detection_scores_jit(
        boxes, conf, mask, empty, np.zeros((1, 0), bool), np.ones((1,), bool), **kw
    )
    assert float(iou[0]) == 0.0
