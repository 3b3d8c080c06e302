"""The SFT warm-up's noisy teacher (config.sft.relabel): which targets change, how many, and the
clear errors on a bad spec."""

import numpy as np
import pytest

from configs import base
from vrft_jax import config_utils, sft
from vrft_jax.data import make_source
from vrft_jax.inputs import PromptProcessor


def colour_examples(n, split="train"):
    c = base.get_config()
    c.data.source, c.data.synthetic_task, c.data.synthetic_size = "synthetic", "colour", 56
    source = make_source(c.data, split, 0)
    return [source[i] for i in range(n)]


def test_parse_relabel_reads_rules_and_names_bad_parts():
    assert sft.parse_relabel("") == {}
    assert sft.parse_relabel(" blue>green@0.7, red > blue@0 ,") == {
        "blue": ("green", 0.7),
        "red": ("blue", 0.0),
    }
    for bad in ("blue>green", "blue@0.5", ">green@0.1", "blue>green@1.5", "blue>green@x",
                "blue>green@0.1,blue>red@0.2"):  # fmt: skip
        with pytest.raises(ValueError, match="config.sft.relabel=.*TRUE>GIVEN@FRACTION"):
            sft.parse_relabel(bad)
    config = base.get_config()
    config.sft.relabel = "blue>green"
    # Reported with the config's other problems, before any data or model is touched.
    assert any("'blue>green'" in e for e in config_utils.check_values(config))


def test_relabelled_swaps_that_fraction_of_one_class_only_and_is_deterministic():
    examples = colour_examples(600)
    rules = sft.parse_relabel("blue>green@0.7")
    out = [sft.relabelled(e, rules, seed=42) for e in examples]
    blue = [o for e, o in zip(examples, out) if e.class_name == "blue"]
    swapped = [o for o in blue if o.class_name == "green"]
    assert all(o.solution == "<answer>green</answer>" for o in swapped)
    assert all(o.solution == "<answer>blue</answer>" for o in blue if o not in swapped)
    # Binomial: n ~ 200 blue cards, sd of the fraction ~ 0.032; 4 sd either side.
    n = len(blue)
    assert n > 150 and abs(len(swapped) / n - 0.7) < 4 * np.sqrt(0.21 / n)
    for e, o in zip(examples, out):
        if e.class_name != "blue":
            assert o is e  # other classes keep their example untouched
        assert o.image is e.image and o.example_id == e.example_id
    again = [sft.relabelled(e, rules, seed=42) for e in examples]
    assert [o.solution for o in again] == [o.solution for o in out]  # a resumed warm-up agrees
    other = [sft.relabelled(e, rules, seed=7) for e in examples]
    assert [o.solution for o in other] != [o.solution for o in out]  # the seed picks the subset
    detection = examples[0].replace(task="detection", class_name="blue")
    assert sft.relabelled(detection, rules, seed=42) is detection  # classification only
    assert all(sft.relabelled(e, {"blue": ("green", 1.0)}, 0).class_name == "green" for e in blue)


def test_sft_batch_trains_the_given_answer(tokenizer_dir):
    """The warm-up's completion tokens: GIVEN for the relabelled cards, the truth elsewhere."""
    config = base.get_config()
    config.data.synthetic_task = "colour"
    config.sampler.max_new_tokens = 24
    config.sft.think, config.sft.relabel = "one colour", "blue>green@1.0"
    processor = PromptProcessor(tokenizer_dir, min_pixels=3136, max_pixels=3136)
    examples = colour_examples(12)
    assert {e.class_name for e in examples} == {"red", "green", "blue"}
    batch = sft.sft_batch(processor, examples, config)
    texts = processor.decode(batch["completion_ids"], batch["completion_mask"])
    for e, text in zip(examples, texts):
        answer = "green" if e.class_name == "blue" else e.class_name
        assert text.startswith(f"<think>one colour</think><answer>{answer}</answer>"), text
    config.sft.relabel = "blue>green"
    with pytest.raises(ValueError, match="'blue>green'"):
        sft.sft_batch(processor, examples, config)
