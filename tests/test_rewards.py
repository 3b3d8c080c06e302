"""Hand-computed cases for every reward rule, and each reference bug next to what we do instead.

Ground truth used by most detection cases: A = [100, 100, 200, 200], B = [300, 300, 400, 400]
(area 10,000 each), so IoU values can be read off by hand.
"""

import json

import ml_collections
import numpy as np
import pytest

from vrft_jax import rewards
from vrft_jax.rewards import parsing

A, B = [100, 100, 200, 200], [300, 300, 400, 400]
FAR = [600, 600, 700, 700]


def completion(answer: str, think: str = "looking") -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


def det_answer(*entries, quote="'") -> str:
    """A detection answer in Python-literal (quote="'") or JSON (quote='"') syntax."""
    items = [
        f"{{{quote}Position{quote}: {list(box)}, {quote}Confidence{quote}: {conf}}}"
        for box, conf in entries
    ]
    return "[" + ", ".join(items) + "]"


def det_solution(*boxes) -> str:
    return "<answer>" + det_answer(*[(b, 1) for b in boxes]) + "</answer>"


def detect(answers, solution, **kwargs):
    """(IoU, confidence) rewards of several answers against one solution, as plain floats; the
    reference's matching (IoU > 0.5, / max(n, m)) unless kwargs say otherwise."""
    completions = [a if a.startswith("<think>") else completion(a) for a in answers]
    kwargs = {"iou_threshold": 0.5, "denominator": "max", **kwargs}
    iou, conf = rewards.detection_rewards(completions, [solution] * len(answers), **kwargs)
    assert iou.dtype == np.float32 and conf.dtype == np.float32
    return iou.tolist(), conf.tolist()


# ---- format ------------------------------------------------------------------------------------


def test_format_reward():
    cases = {
        "<think>a</think><answer>b</answer>": 1.0,
        "<think>line\nline</think>\n\n<answer>\nb\n</answer>": 1.0,  # newlines anywhere
        "<think>a</think><answer>b</answer>\n": 1.0,  # stripped (reference: 0)
        "  <think>a</think> <answer>b</answer>  ": 1.0,
        "hi <think>a</think><answer>b</answer>": 0.0,  # text before
        "<think>a</think><answer>b</answer> bye": 0.0,  # text after
        "<answer>b</answer>": 0.0,
        "<think>a</think>": 0.0,
        "<think>a</think><answer>b": 0.0,  # unclosed answer
        "": 0.0,
    }
    got = rewards.format_reward(list(cases))
    assert got.dtype == np.float32
    assert got.tolist() == list(cases.values())


# ---- answer extraction -------------------------------------------------------------------------


def test_extract_answer_first_tag_newlines_and_missing():
    assert rewards.extract_answer("<think>x</think><answer>\n a \n</answer>") == "a"
    assert rewards.extract_answer("<answer>1</answer><answer>2</answer>") == "1"
    assert rewards.extract_answer("no tags at all") is None
    assert rewards.extract_answer("<answer>unclosed") is None
    assert parsing.solution_answer("daisy") == "daisy"  # untagged solutions are used whole
    assert parsing.solution_answer("<answer> daisy </answer>") == "daisy"


# ---- detection: reference table (docs section 1.6), GT = A, B ---------------------------------


def test_detection_matches_reference_table():
    solution = det_solution(A, B)
    answers = [
        det_answer((A, 0.9)),  # B missed
        det_answer((A, 0.9), (B, 0.8)),
        det_answer((A, 0.9), (FAR, 0.2)),  # a false positive
        det_answer((A, 0.9), (B, 0.8), (FAR, 0.1)),
        det_answer(([100, 100, 200, 145], 0.9)),  # IoU 0.45
        det_answer(([100, 100, 200, 160], 0.9)),  # IoU 0.6
        det_answer((A, 0.9), (A, 0.9)),  # exact duplicate dropped
    ]
    iou, conf = detect(answers, solution)
    np.testing.assert_allclose(iou, [0.5, 1.0, 0.5, 2 / 3, 0.0, 0.3, 0.5], atol=1e-6)
    np.testing.assert_allclose(conf, [0.9, 0.85, 0.85, (0.9 + 0.8 + 0.9) / 3, 0.1, 0.9, 0.9], 1e-6)


def test_detection_json_and_python_literal_agree():
    solution = det_solution(A, B)
    both = [det_answer((A, 0.9), (B, 0.7), quote=q) for q in ("'", '"')]
    iou, conf = detect(both, solution)
    assert iou == [1.0, 1.0]
    np.testing.assert_allclose(conf, [0.8, 0.8], atol=1e-6)
    # A lone dict, a tuple and lower-case keys are read too.
    lone = "{'position': [100, 100, 200, 200], 'confidence': 0.5}"
    pair = lone + ", " + lone.replace("100, 100, 200, 200", "300, 300, 400, 400")
    iou, _ = detect([lone, pair], solution)
    assert iou == [0.5, 1.0]


def test_detection_doubled_brackets_read_as_in_the_reference():
    """The reference replaces `[[` by `[` and `]]` by `]` before parsing, so these shapes earn
    credit there; GT = A, B, rewards worked out by hand."""
    solution = det_solution(A, B)
    wrapped_list = "[" + det_answer((A, 0.9)) + "]"  # [[{...}]]
    wrapped_boxes = det_answer(([A], 0.9), ([B], 0.8))  # 'Position': [[x1, y1, x2, y2]]
    both_cut_off = "[[{'Position': [[100, 100, 200, 200]], 'Confidence': 0.9}, {'Position': [[3"
    two_boxes_in_one = (
        "[{'Position': [[100, 100, 200, 200], [300, 300, 400, 400]], 'Confidence': 1}]"
    )
    iou, conf = detect([wrapped_list, wrapped_boxes, both_cut_off, two_boxes_in_one], solution)
    # A found, B missed: IoU 1 / max(1, 2); confidence 0.9 (matched). Both found: IoU 2 / 2,
    # confidence (0.9 + 0.8) / 2. Cut off after the first entry: as the first. Two boxes in one
    # Position is not a box: unreadable (0 in the reference too).
    np.testing.assert_allclose(iou, [0.5, 1.0, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(conf, [0.9, 0.85, 0.9, 0.0], atol=1e-6)


def test_detection_iou_threshold_is_strict():
    half = det_answer(([100, 100, 200, 150], 0.8))  # IoU exactly 0.5 with A
    iou, conf = detect([half], det_solution(A))
    assert iou == [0.0] and conf == pytest.approx([0.2])
    iou, conf = detect([half], det_solution(A), iou_threshold=0.4)
    assert iou == [0.5] and conf == pytest.approx([0.8])


def test_detection_denominator_option():
    one = [det_answer((A, 0.9))]
    assert detect(one, det_solution(A, B))[0] == [0.5]  # reference code: / max(n, m)
    assert detect(one, det_solution(A, B), denominator="predictions")[0] == [1.0]  # paper: / n
    fp = [det_answer((A, 0.9), (FAR, 0.9))]
    assert detect(fp, det_solution(A), denominator="predictions")[0] == [0.5]


def test_greedy_matching_rules():
    # The most confident prediction picks first, even if a later one would fit better.
    answer = det_answer(([100, 100, 200, 180], 0.9), (A, 0.5))  # IoU 0.8 then 1.0 with A
    iou, conf = detect([answer], det_solution(A))
    assert iou == pytest.approx([0.4]) and conf == pytest.approx([(0.9 + 0.5) / 2])
    # Equal confidences keep the written order (stable sort).
    answer = det_answer((A, 0.5), ([100, 100, 200, 180], 0.5))
    iou, _ = detect([answer], det_solution(A))
    assert iou == pytest.approx([0.5])
    # A prediction takes the free ground truth of highest IoU: [100,100,200,170] has IoU 0.7 with A
    # and 60/70 with C = [100,100,200,160].
    answer = det_answer(([100, 100, 200, 170], 0.9))
    iou, _ = detect([answer], det_solution(A, [100, 100, 200, 160]))
    assert iou == pytest.approx([6 / 7 / 2])
    # An unmatched prediction leaves the ground truth free for the next one.
    answer = det_answer((FAR, 0.9), (A, 0.8))
    iou, conf = detect([answer], det_solution(A))
    assert iou == pytest.approx([0.5]) and conf == pytest.approx([(0.1 + 0.8) / 2])
    # Ground truth already taken is not matched twice (the near-copy is a false positive).
    answer = det_answer((A, 0.9), ([100, 100, 200, 199], 0.6))
    iou, conf = detect([answer], det_solution(A))
    assert iou == pytest.approx([0.5]) and conf == pytest.approx([(0.9 + 0.4) / 2])


def test_detection_negatives():
    no_gt = "<answer>No Objects</answer>"
    answers = ["[]", "No Objects", "no objects.", "'No Objects'", det_answer((A, 0.3))]
    iou, conf = detect(answers, no_gt)
    assert iou == [1.0, 1.0, 1.0, 1.0, 0.0]  # reference: 0 for `[]` and "No Objects"
    assert conf == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.7])  # a false positive earns 1 - c
    assert detect(["[]"], "<answer>[]</answer>") == ([1.0], [1.0])
    assert detect(["[]", "No Objects"], det_solution(A)) == ([0.0, 0.0], [0.0, 0.0])


def test_detection_truncated_list_is_repaired():
    full = det_answer((A, 0.9), (B, 0.8))
    cut = full[:-1] + ", {'Position': [600, 6"  # cut mid-entry, as max_new_tokens does
    iou, conf = detect([cut, full[:-1], full[:20]], det_solution(A, B))
    assert iou == [1.0, 1.0, 0.0]  # nothing complete in the last one
    assert conf == pytest.approx([0.85, 0.85, 0.0])
    # Only truncation is repaired: garbage in the middle of a closed list invalidates it.
    bad = "[" + det_answer((A, 0.9))[1:-1] + ", garbage, " + det_answer((B, 0.8))[1:]
    assert detect([bad], det_solution(A, B)) == ([0.0], [0.0])


def test_reference_bug_nan_confidence():
    # Reference: json.loads accepts NaN, so R_conf = NaN and training blew up (issue #115).
    nan_json = '[{"Position": [100, 100, 200, 200], "Confidence": NaN}]'
    inf_json = '[{"Position": [100, 100, 200, Infinity], "Confidence": 0.9}]'
    iou, conf = detect([nan_json, inf_json], det_solution(A))
    assert iou == [0.0, 0.0] and conf == [0.0, 0.0]  # ours: the answer is invalid, reward 0


def test_bad_entries_invalidate_the_whole_answer():
    good = "{'Position': [100, 100, 200, 200], 'Confidence': 0.9}"
    bad_entries = [
        "{'Position': ['100', 100, 200, 200], 'Confidence': 0.9}",  # string coordinate
        "{'Position': [100, 100, 200], 'Confidence': 0.9}",  # three numbers
        "{'Position': [100, 100, 200, 200], 'Confidence': 'high'}",
        "{'Position': [100, 100, 200, 200]}",  # no confidence
        "{'Position': [true, 100, 200, 200], 'Confidence': 0.9}",
        "[1, 2, 3, 4]",
    ]
    answers = [f"[{good}, {bad}]" for bad in bad_entries] + [f"[{good}]"]
    iou, conf = detect(answers, det_solution(A))
    assert iou == [0.0] * len(bad_entries) + [1.0]


def test_confidences_and_coordinates_are_clipped():
    # Reference: c = 1.5 on a false positive gave r = 1 - 1.5 = -0.5. Ours: c clipped to 1 -> 0.
    iou, conf = detect([det_answer((A, 0.9), (FAR, 1.5))], det_solution(A))
    assert iou == [0.5] and conf == pytest.approx([(0.9 + 0.0) / 2])
    iou, conf = detect([det_answer((A, -2))], det_solution(A))
    assert conf == [0.0]  # clipped to 0, matched -> c = 0
    # Coordinates clip to 0..1000; huge finite numbers are just big.
    answers = [det_answer(([-50, -50, 1e30, 1000], 1.0))]
    iou, _ = detect(answers, det_solution([0, 0, 1000, 1000]))
    assert iou == [1.0]


def test_reference_bug_math_verify_leak():
    # Reference: math-verify parsed y1 of the first box (0 here) as the answer, so any prediction
    # with y1 = 0 got R_IoU = R_conf = 1. Ours: task logic only.
    solution = "<answer>[{'Position': [64, 0, 950, 411], 'Confidence': 1}]</answer>"
    iou, conf = detect([det_answer(([900, 0, 1000, 50], 1.0))], solution)
    assert iou == [0.0] and conf == [0.0]


def test_reference_bug_newlines_in_answer():
    # Reference: <answer> with a newline inside was not found (no DOTALL): reward 0.
    multiline = "<think>x</think>\n<answer>\n[\n  {'Position': [100, 100, 200, 200],\n"
    multiline += "   'Confidence': 0.9}\n]\n</answer>"
    iou, conf = detect([multiline], det_solution(A, B))
    assert iou == [0.5] and conf == pytest.approx([0.9])


def test_detection_without_answer_tag_or_bad_solution_scores_zero():
    text = "<think>[{'Position': [100, 100, 200, 200], 'Confidence': 0.9}]</think>"
    assert detect([text], det_solution(A)) == ([0.0], [0.0])
    assert detect([det_answer((A, 0.9))], "<answer>not boxes</answer>") == ([0.0], [0.0])
    assert detect(["Here you go: " + det_answer((A, 0.9))], det_solution(A)) == ([0.0], [0.0])


def test_public_detection_functions_and_json_solution():
    solution = "<answer>" + json.dumps([{"Position": A, "Confidence": 1}]) + "</answer>"
    comps = [completion(det_answer((A, 0.6))), completion(det_answer((FAR, 0.6)))]
    iou = rewards.detection_iou_reward(comps, [solution] * 2, iou_threshold=0.5, denominator="max")
    conf = rewards.detection_confidence_reward(comps, [solution] * 2, iou_threshold=0.5)
    assert iou.tolist() == [1.0, 0.0] and conf.tolist() == pytest.approx([0.6, 0.4])


# ---- classification ----------------------------------------------------------------------------


def test_classification_exact_and_contains():
    solution = "<answer>japanese_chin</answer>"
    answers = {
        "Japanese Chin": (1.0, 1.0),
        "  japanese-chin ": (1.0, 1.0),
        "chin": (0.0, 0.0),  # reference: 1 (label contains the answer)
        "pug or japanese chin": (0.0, 1.0),  # only the contains option accepts a list
        "": (0.0, 0.0),  # reference: 1 (empty string is in everything), models collapsed to it
        "   ": (0.0, 0.0),
        "\nJapanese\nChin\n": (1.0, 1.0),  # reference: multi-line answer missed
    }
    comps = [completion(a) for a in answers]
    exact = rewards.classification_reward(comps, [solution] * len(comps), match="exact")
    contains = rewards.classification_reward(comps, [solution] * len(comps), match="contains")
    assert exact.dtype == np.float32
    assert exact.tolist() == [v[0] for v in answers.values()]
    assert contains.tolist() == [v[1] for v in answers.values()]


def test_reference_bug_label_in_think_without_answer():
    # Reference: no <answer> on one line -> whole completion used, so naming the label in <think>
    # scored 1. Ours: no answer tag, no prediction.
    comps = ["<think>maybe daisy</think> daisy", "<think>maybe daisy</think><answer>daisy"]
    for match in ("exact", "contains"):
        assert rewards.classification_reward(comps, ["daisy"] * 2, match=match).tolist() == [0, 0]
    daisy = rewards.classification_reward([completion("Daisy")], ["daisy"], match="exact")
    assert daisy.tolist() == [1.0]


# ---- grounding ---------------------------------------------------------------------------------


def test_grounding_iou_and_giou():
    solution = "<answer> (0,0),(100,100) </answer>"
    answers = [
        "(0,0),(100,100)",
        "[0, 0, 50, 100]",  # IoU 0.5; enclosing box = union -> GIoU 0.5
        "(200,0),(300,100)",  # IoU 0; enclosing 30,000, union 20,000 -> GIoU -1/3
        "(0, 0), (50.5, 100)",  # decimals are fine
        "(0,0),(50,100) and (0,0),(100,100)",  # only the first box counts
        "no box",
    ]
    comps = [completion(a) for a in answers] + ["(0,0),(100,100)"]  # last: no answer tag
    n = len(comps)
    iou = rewards.grounding_iou_reward(comps, [solution] * n, mode="iou")
    giou = rewards.grounding_iou_reward(comps, [solution] * n, mode="giou_plus_one")
    np.testing.assert_allclose(iou, [1.0, 0.5, 0.0, 0.505, 0.5, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(giou, [2.0, 1.5, 2 / 3, 1.505, 1.5, 0.0, 0.0], atol=1e-6)


def test_grounding_clips_and_handles_degenerate_boxes():
    solution = "<answer>[0, 0, 1000, 1000]</answer>"
    comps = [completion("(-10,-10),(5000,5000)"), completion("(10,10),(10,10)")]
    iou = rewards.grounding_iou_reward(comps, [solution] * 2, mode="iou")
    giou = rewards.grounding_iou_reward(comps, [solution] * 2, mode="giou_plus_one")
    assert iou.tolist() == [1.0, 0.0]
    assert giou.tolist() == [2.0, 1.0]  # empty box inside the GT: IoU 0, enclosing = union


# ---- registry ----------------------------------------------------------------------------------


def test_score_weights_and_per_reward():
    comps = [completion(det_answer((A, 0.9))), "garbage"]
    sols = [det_solution(A, B)] * 2
    specs = (("format", 1.0), ("detection_iou", 2.0), ("detection_confidence", 0.5))
    options = ml_collections.ConfigDict(
        {
            "iou_threshold": 0.5,
            "iou_denominator": "max",
            "classification_match": "exact",
            "grounding": "iou",
        }
    )
    total, per = rewards.score(comps, sols, specs, options)
    assert set(per) == {"format", "detection_iou", "detection_confidence"}
    assert per["format"].tolist() == [1.0, 0.0]
    assert per["detection_iou"].tolist() == [0.5, 0.0]
    np.testing.assert_allclose(total, [1.0 + 2 * 0.5 + 0.5 * 0.9, 0.0], atol=1e-6)
    assert total.dtype == np.float32
    options.iou_denominator = "predictions"
    _, per = rewards.score(comps, sols, specs, options)
    assert per["detection_iou"].tolist() == [1.0, 0.0]


def test_score_other_tasks_and_bad_specs():
    total, per = rewards.score(
        [completion("daisy"), completion("rose")],
        ["<answer>daisy</answer>"] * 2,
        [("classification", 1.0), ("format", 1.0)],
        {"classification_match": "exact"},
    )
    assert total.tolist() == [2.0, 1.0]
    total, _ = rewards.score(
        [completion("(0,0),(100,100)")],
        ["<answer>(0,0),(100,100)</answer>"],
        [("grounding_iou", 1.0)],
        {"grounding": "giou_plus_one"},
    )
    assert total.tolist() == [2.0]
    for specs in ([("accuracy", 1.0)], [], [("format", float("nan"))], [("format", 1.0)] * 2):
        with pytest.raises(ValueError, match="rewards"):
            rewards.score(["x"], ["y"], specs)
    with pytest.raises(ValueError, match="iou_denominator"):
        rewards.score(
            ["x"],
            ["y"],
            [("detection_iou", 1.0)],
            {"iou_threshold": 0.5, "iou_denominator": "mean"},
        )
    with pytest.raises(ValueError, match="classification_match"):
        rewards.classification_reward(["x"], ["y"], match="substring")


def test_padding_caps_boxes_by_confidence():
    answer = det_answer(
        (A, 0.1), (B, 0.9), (FAR, 0.5), ([0, 0, 10, 10], 0.9), ([0, 0, 20, 20], 0.2)
    )
    batch = rewards.parse_detection_batch([completion(answer)], [det_solution(A, B)], num_boxes=3)
    assert batch.pred_boxes.shape == (8, 3, 4) and batch.gt_boxes.shape == (8, 3, 4)
    # The three most confident (ties: written order), kept in written order.
    assert batch.pred_boxes[0].tolist() == [B, FAR, [0, 0, 10, 10]]
    assert batch.pred_mask.tolist()[0] == [True] * 3 and not batch.pred_mask[1:].any()
    assert batch.valid.tolist() == [True] + [False] * 7  # padding rows are invalid


def test_score_without_options_uses_the_base_config():
    """options=None reads configs/base.py's `reward` block (no second copy of the defaults)."""
    from configs.base import get_config

    comps = [completion(det_answer((A, 0.9))), completion("daisy")]
    sols = [det_solution(A, B), "<answer>daisy</answer>"]
    specs = (("detection_iou", 1.0), ("classification", 1.0))
    total, per = rewards.score(comps, sols, specs)
    want_total, want_per = rewards.score(comps, sols, specs, get_config().reward)
    assert total.tolist() == want_total.tolist()
    assert per["detection_iou"].tolist() == [0.5, 0.0]  # 1 of max(1, 2) boxes, IoU 1
    assert per["classification"].tolist() == [0.0, 1.0]
    assert dict(rewards.registry.default_options()) == dict(get_config().reward)
