"""Benchmark: score 4,096 detection completions with up to 32 boxes each (prints, asserts nothing).

    PYTHONPATH=. python bench/rewards.py [--n 4096] [--max_boxes 32] [--repeats 3]

Times host parsing (`parse_detection_batch`: regex, literal parsing, padding) and the jitted jnp
kernel (`detection_scores`: pairwise IoU, greedy matching, both rewards) separately; the kernel
time excludes its one-off compile, which is printed on its own.
"""

import argparse
import time

import jax
import numpy as np

from vrft_jax.rewards import kernels, parsing


def make_texts(n, max_boxes, seed=0):
    """n completions (0..max_boxes boxes, half near a GT box) and their solutions (1..16 boxes)."""
    rng = np.random.default_rng(seed)
    completions, solutions = [], []
    for _ in range(n):
        gt = rng.integers(0, 900, (rng.integers(1, 17), 2))
        gt = np.concatenate([gt, gt + rng.integers(20, 100, gt.shape)], -1)
        k = rng.integers(0, max_boxes + 1)
        pred = np.concatenate([gt] * (max_boxes // len(gt) + 1))[:k] + rng.integers(-10, 10, (k, 4))
        entries = [
            f"{{'Position': {box.tolist()}, 'Confidence': {rng.random():.2f}}}" for box in pred
        ]
        gt_entries = [f"{{'Position': {box.tolist()}, 'Confidence': 1}}" for box in gt]
        completions.append(f"<think>boxes</think><answer>[{', '.join(entries)}]</answer>")
        solutions.append(f"<answer>[{', '.join(gt_entries)}]</answer>")
    return completions, solutions


def timed(fn, repeats):
    """Best wall time and best process CPU time (all threads) over repeats, and the result.

    CPU time is reported too because a shared machine inflates wall time.
    """
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_wall, best_cpu, result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--max_boxes", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    completions, solutions = make_texts(args.n, args.max_boxes)
    chars = sum(map(len, completions)) / len(completions)
    print(f"device: {jax.devices()[0].device_kind}  N={args.n}  max boxes={args.max_boxes}")
    print(f"mean completion length: {chars:.0f} chars")

    parse_s, parse_cpu, batch = timed(
        lambda: parsing.parse_detection_batch(completions, solutions, num_boxes=args.max_boxes),
        args.repeats,
    )
    print(
        f"host parsing:   {parse_s * 1e3:8.1f} ms wall, {parse_cpu * 1e3:8.1f} ms cpu"
        f"  ({parse_s / args.n * 1e6:.1f} us/completion)"
    )
    print(f"padded arrays:  pred {batch.pred_boxes.shape}, gt {batch.gt_boxes.shape}")

    device_batch = jax.device_put(tuple(batch))
    from configs.base import get_config  # the default reward options (needs ml_collections)

    reward = get_config().reward
    options = dict(iou_threshold=reward.iou_threshold, denominator=reward.iou_denominator)

    def kernel():
        return jax.block_until_ready(kernels.detection_scores_jit(*device_batch, **options))

    start = time.perf_counter()
    kernel()
    print(f"kernel compile: {(time.perf_counter() - start) * 1e3:8.1f} ms (one-off)")
    kernel_s, kernel_cpu, (iou, conf) = timed(kernel, args.repeats)
    print(
        f"kernel:         {kernel_s * 1e3:8.1f} ms wall, {kernel_cpu * 1e3:8.1f} ms cpu"
        "  (IoU + greedy matching + both rewards)"
    )
    print(f"mean rewards:   IoU {float(iou.mean()):.3f}  confidence {float(conf.mean()):.3f}")


if __name__ == "__main__":
    main()
