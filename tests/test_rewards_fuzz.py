"""Property-based fuzzing: whatever the model writes, every reward returns finite float32 values in
range ([0, 1]; [0, 2] for GIoU + 1) and never raises.

Each example is a batch of 8 completions, so the jitted kernels see one shape bucket per box count
and compile only a few times.
"""

import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vrft_jax import rewards

BATCH = 8
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

# Numbers a model might write, including ones json.dumps renders as NaN / Infinity / 1e+300.
numbers = st.one_of(
    st.integers(-(10**30), 10**30),
    st.integers(0, 1000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 1),
)
entries = st.fixed_dictionaries(
    {"Position": st.lists(numbers, min_size=3, max_size=5), "Confidence": numbers}
)


@st.composite
def detection_text(draw):
    """A JSON or Python-literal box list, possibly cut anywhere or with its quotes swapped."""
    text = json.dumps(draw(st.lists(entries, max_size=40)))
    if draw(st.booleans()):
        text = text.replace('"', "'")
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


grounding_text = st.builds(
    "({},{}),({},{})".format, numbers, numbers, numbers, numbers
) | st.builds(lambda xs: str(xs), st.lists(numbers, min_size=4, max_size=4))

answers = st.one_of(
    st.text(max_size=200),  # arbitrary unicode
    detection_text(),
    grounding_text,
    st.sampled_from(["[]", "No Objects", "NaN", "Infinity", "[[[[", "{}", "[{}]", "", "}]"]),
    st.just("9" * 5000),  # huge number literal
    st.just("[" * 3000 + "]" * 3000),  # deep nesting
)


@st.composite
def completions(draw):
    answer = draw(answers)
    shape = draw(st.integers(0, 5))
    if shape == 0:
        return f"<think>{draw(st.text(max_size=50))}</think><answer>{answer}</answer>"
    if shape == 1:  # nested / repeated tags
        return f"<think><answer>{answer}</think></answer><answer><answer>{answer}</answer>"
    if shape == 2:  # truncated mid-answer
        return f"<think>x</think><answer>{answer}"
    if shape == 3:
        return answer
    if shape == 4:
        return f"<answer>\n{answer}\n</answer>\n<answer>{draw(answers)}</answer>"
    return draw(st.text(alphabet="<>/answerthink[]{}(),.'\"0123456789 \n", max_size=120))


solutions = st.one_of(
    st.sampled_from(
        [
            "<answer>[{'Position': [64, 0, 950, 411], 'Confidence': 1}]</answer>",
            "<answer>[]</answer>",
            "<answer>No Objects</answer>",
            "<answer>daisy</answer>",
            "japanese_chin",
            "<answer> (120,40),(560,610) </answer>",
            "<answer>[100, 100, 200, 200]</answer>",
        ]
    ),
    completions(),  # malformed solutions must not crash either
)
batches = st.tuples(
    st.lists(completions(), min_size=BATCH, max_size=BATCH),
    st.lists(solutions, min_size=BATCH, max_size=BATCH),
)


def check(values, high=1.0):
    assert isinstance(values, np.ndarray) and values.dtype == np.float32
    assert values.shape == (BATCH,)
    assert np.isfinite(values).all()
    assert ((values >= 0) & (values <= high)).all(), values


@FUZZ
@given(batches)
def test_rewards_never_raise_and_stay_in_range(batch):
    comps, sols = batch
    check(rewards.format_reward(comps))
    for match in ("exact", "contains"):
        check(rewards.classification_reward(comps, sols, match=match))
    for denominator in ("max", "predictions"):
        iou, conf = rewards.detection_rewards(
            comps, sols, iou_threshold=0.5, denominator=denominator
        )
        check(iou)
        check(conf)
    check(rewards.detection_iou_reward(comps, sols, iou_threshold=0.5, denominator="max"))
    check(rewards.detection_confidence_reward(comps, sols, iou_threshold=0.0))
    check(rewards.grounding_iou_reward(comps, sols, mode="iou"))
    check(rewards.grounding_iou_reward(comps, sols, mode="giou_plus_one"), high=2.0)


@FUZZ
@given(st.lists(detection_text(), min_size=1, max_size=BATCH))
def test_parsed_boxes_are_clean(texts):
    for text in texts:
        parsed = rewards.parse_detection_answer(text)
        assert parsed.boxes.dtype == np.float32 and parsed.boxes.shape == (len(parsed.conf), 4)
        assert np.isfinite(parsed.boxes).all() and np.isfinite(parsed.conf).all()
        assert ((parsed.boxes >= 0) & (parsed.boxes <= 1000)).all()
        assert ((parsed.conf >= 0) & (parsed.conf <= 1)).all()
        assert parsed.valid or len(parsed.conf) == 0


@FUZZ
@given(st.lists(entries, min_size=1, max_size=12))
def test_valid_answers_read_back_exactly(items):
    """A well-formed answer (finite numbers, 4 coordinates) is read entry by entry."""
    good = all(
        len(e["Position"]) == 4 and all(math.isfinite(v) for v in e["Position"] + [e["Confidence"]])
        for e in items
    )
    parsed = rewards.parse_detection_answer(json.dumps(items))
    assert parsed.valid == good
    if good:
        unique = {tuple(float(v) for v in e["Position"]) for e in items}
        assert len(parsed.conf) == len(unique)
