"""Float32 comparisons whose tolerance follows the computation's scale, not a fixed number.

XLA may sum float32 terms in another order from one build, CPU or setting to the next (vector
width, thread count, fusion, remat, a dot split over devices). Reordering a sum of K terms moves
it by a few units in the last place (ulps) of the *terms'* magnitude (pairwise/vectorised sums:
about log2(K) ulps; worst case K), not of the result's: an element that nearly cancels to 0
can change by many of its own ulps. So a fixed absolute tolerance is too tight for arrays of
large scale and a relative one fails near 0; here the allowed error is a count of float32 ulps of
the compared array's scale (its largest magnitude), with the count derived in each caller.
"""

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: one ulp at magnitude 1


def assert_close_to_scale(actual, desired, ulps: float, *, scale=None, err_msg: str = ""):
    """|actual - desired| <= ulps * EPS32 * scale everywhere; scale defaults to max |desired|."""
    actual = np.asarray(actual, np.float64)
    desired = np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (actual.shape, desired.shape, err_msg)
    scale = float(np.max(np.abs(desired), initial=0.0)) if scale is None else float(scale)
    bound = ulps * EPS32 * scale
    err = float(np.max(np.abs(actual - desired), initial=0.0))
    assert err <= bound, (
        f"{err_msg}: max abs diff {err:.3g} > {ulps} ulps of scale {scale:.3g} = {bound:.3g} "
        f"({err / (EPS32 * scale) if scale else float('inf'):.1f} ulps)"
    )
    return err / (EPS32 * scale) if scale else 0.0
