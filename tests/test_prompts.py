"""Prompt templates: the reference wording character for character, and clear errors."""

import pytest

from vrft_jax import prompts

# The reference texts, written out independently of prompts.py (visual_rft_reference.md section 2).
REFERENCE_DETECTION_DOG = (
    "Detect all objects belonging to the category 'dog' in the image, and provide the bounding "
    "boxes (between 0 and 1000, integer) and confidence (between 0 and 1, with two decimal "
    "places).\n"
    "If no object belonging to the category 'dog' in the image, return 'No Objects'.\n"
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> "
    "tags.The output answer format should be as follows:\n"
    "<think> ... </think> <answer>[{'Position': [x1, y1, x2, y2], 'Confidence': number}, ...]"
    "</answer>\nPlease strictly follow the format."
)
REFERENCE_CLASSIFICATION_AIRCRAFT = (
    "This is an image containing an aircraft. Please identify the model of the aircraft based on "
    "the image.\nOutput the thinking process in <think> </think> and final answer in <answer> "
    "</answer> tags.The output answer format should be as follows:\n<think> ... </think> "
    "<answer>species name</answer>\nPlease strictly follow the format."
)
REFERENCE_GROUNDING_CUP = (
    "Output the bounding box in the image corresponding to the instruction: the red cup Output "
    'the thinking process in <think> </think> and your grouding box. Following "<think> thinking '
    'process </think>\n<answer>(x1,y1),(x2,y2)</answer>)" format.'
)


def test_detection_matches_reference():
    assert prompts.build_prompt("detection", category="dog") == REFERENCE_DETECTION_DOG


def test_classification_matches_reference():
    got = prompts.build_prompt("classification", subject="aircraft")
    assert got == REFERENCE_CLASSIFICATION_AIRCRAFT


@pytest.mark.parametrize(
    "subject, sentence",
    [
        (
            "flowers",
            "This is an image containing a plant. Please identify the species of the plant",
        ),
        ("pets", "This is an image containing a pet. Please identify the species of the pet"),
        ("cars", "This is an image containing a car. Please identify the model of the car"),
    ],
)
def test_classification_subjects_share_the_tail(subject, sentence):
    got = prompts.build_prompt("classification", subject=subject)
    assert got.startswith(sentence + " based on the image.\n")
    tail = REFERENCE_CLASSIFICATION_AIRCRAFT.split("\n", 1)[1]
    assert got.split("\n", 1)[1] == tail


def test_grounding_matches_reference_quirks_included():
    got = prompts.build_prompt("grounding", instruction="the red cup")
    assert got == REFERENCE_GROUNDING_CUP
    assert "grouding" in got and '</answer>)"' in got
    evaluation = prompts.build_prompt("grounding_eval", instruction="the red cup")
    assert evaluation == got.replace("the red cup Output", "the red cup. Output")


def test_raw_returns_the_problem_unchanged():
    text = "Count the {objects} in $this image.\n<think>?"
    assert prompts.build_prompt("raw", problem=text) == text


def test_field_values_are_inserted_verbatim():
    got = prompts.build_prompt("detection", category="a $b {c}")
    assert got.count("'a $b {c}'") == 2


def test_template_fields_and_config_choices():
    assert prompts.template_fields("detection") == ("category",)
    assert prompts.template_fields("raw") == ("problem",)
    # every template named in configs/base.py's comment exists
    for name in ("detection", "classification", "grounding", "raw"):
        assert name in prompts.TEMPLATES


@pytest.mark.parametrize(
    "template, fields, message",
    [
        ("detectoin", {"category": "dog"}, "unknown prompt template 'detectoin'"),
        ("detection", {}, "missing ['category']"),
        ("detection", {"category": "dog", "colour": "red"}, "unknown ['colour']"),
        ("classification", {"subject": "birds"}, "unknown classification subject 'birds'"),
    ],
)
def test_bad_template_or_fields_fail_clearly(template, fields, message):
    with pytest.raises(ValueError) as e:
        prompts.build_prompt(template, **fields)
    assert message in str(e.value)


def test_r1_system_prompt_wording():
    assert prompts.R1_SYSTEM_PROMPT.startswith("A conversation between User and Assistant. ")
    assert prompts.R1_SYSTEM_PROMPT.endswith(
        "i.e., <think> reasoning process here </think><answer> answer here </answer>"
    )
