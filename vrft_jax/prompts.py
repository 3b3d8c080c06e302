"""Task prompt templates, with the exact wording of the Visual-RFT reference.

The texts are what the reference trains on (the `problem` field of its datasets and the
QUESTION_TEMPLATE of its LISA script), so a model fine-tuned by the reference sees the same prompts
here. Their quirks are kept on purpose, because changing them changes the tokens the model sees:

- detection and classification: no space after "tags." ("...</answer> tags.The output answer ...");
  each `\\n` is a real newline.
- classification: the answer placeholder says "species name" for every subject (aircraft and cars
  too), as in the reference's classification inference script.
- grounding: "grouding" (sic), and a stray `)` after `</answer>` inside the quoted format; the
  `\\n` inside the quotes is a real newline. Training omits the period after the instruction;
  the reference's evaluation and demo add one ("grounding_eval" here).

Use `build_prompt(config.input.prompt_template, **fields)`; `template_fields(name)` says which
fields a template needs. The system prompt of the reference (R1 text) is `R1_SYSTEM_PROMPT`; the
reference uses it only for text-only data and LISA evaluation, so image prompts normally go without
it and the Qwen2-VL chat template adds its default "You are a helpful assistant.".

Box frames (vrft_jax.box_frames): the texts above ask for Qwen2-VL's 0..1000 boxes (the grounding
text names no frame, Qwen2-VL's own is implied). A model answering in absolute pixels (Qwen2.5-VL)
is asked in its own frame: `in_frame(question, "absolute_pixels")` rewrites the detection phrase
"(between 0 and 1000, integer)" and names the frame in the grounding sentence. The image size is
not written into the prompt: Qwen2.5-VL was trained to answer in the pixels of the resized image
it sees without being told the size, the reference's Qwen2.5-VL support (2025-05-21) kept its
0..1000 prompts and never gives a size, and a size-free text can be built before the image is
decoded (docs/REWARDS.md, "Box frames").
"""

import logging
import string

from vrft_jax import box_frames

# The R1 system prompt defined in all three reference GRPO scripts (used for text-only samples).
R1_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves "
    "it. The assistant first thinks about the reasoning process in the mind and then provides the "
    "user with the answer. The reasoning process and answer are enclosed within <think> </think> "
    "and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think>"
    "<answer> answer here </answer>"
)

# Shared tail of the detection and classification prompts. Note "tags.The": no space (reference).
_THINK_ANSWER_TAGS = (
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    "The output answer format should be as follows:\n"
)

DETECTION = string.Template(
    "Detect all objects belonging to the category '${category}' in the image, and provide the "
    "bounding boxes (between 0 and 1000, integer) and confidence (between 0 and 1, with two "
    "decimal places).\n"
    "If no object belonging to the category '${category}' in the image, return 'No Objects'.\n"
    + _THINK_ANSWER_TAGS
    + "<think> ... </think> <answer>[{'Position': [x1, y1, x2, y2], 'Confidence': number}, ...]"
    "</answer>\n"
    "Please strictly follow the format."
)

# First sentence of the classification prompt per subject. "aircraft" is the reference inference
# script, "flowers" is the paper (Table 1); "pets" and "cars" follow the same pattern (third-party
# fork, unverified as official).
CLASSIFICATION_SUBJECTS = {
    "aircraft": "This is an image containing an aircraft. "
    "Please identify the model of the aircraft based on the image.",
    "flowers": "This is an image containing a plant. "
    "Please identify the species of the plant based on the image.",
    "pets": "This is an image containing a pet. "
    "Please identify the species of the pet based on the image.",
    "cars": "This is an image containing a car. "
    "Please identify the model of the car based on the image.",
}

CLASSIFICATION = string.Template(
    "${subject_sentence}\n"
    + _THINK_ANSWER_TAGS
    + "<think> ... </think> <answer>species name</answer>\n"
    "Please strictly follow the format."
)

# LISA reasoning grounding: the question, then QUESTION_TEMPLATE's tail ("grouding" and ")" sic).
_GROUNDING_TAIL = (
    " Output the thinking process in <think> </think> and your grouding box. Following "
    '"<think> thinking process </think>\n<answer>(x1,y1),(x2,y2)</answer>)" format.'
)
GROUNDING = string.Template(
    "Output the bounding box in the image corresponding to the instruction: ${instruction}"
    + _GROUNDING_TAIL
)
GROUNDING_EVAL = string.Template(
    "Output the bounding box in the image corresponding to the instruction: ${instruction}."
    + _GROUNDING_TAIL
)

RAW = string.Template("${problem}")

# The reference's words for the frame -> the words asking in absolute pixels (in_frame).
_DETECTION_RELATIVE = "(between 0 and 1000, integer)"
_DETECTION_PIXELS = "(in absolute pixel coordinates of the image, integer)"
_GROUNDING_RELATIVE = "Output the bounding box in the image"
_GROUNDING_PIXELS = "Output the bounding box (in absolute pixel coordinates) in the image"
_warned_unconverted = False

# name -> (template, the fields build_prompt needs)
TEMPLATES = {
    "detection": (DETECTION, ("category",)),
    "classification": (CLASSIFICATION, ("subject",)),
    "grounding": (GROUNDING, ("instruction",)),
    "grounding_eval": (GROUNDING_EVAL, ("instruction",)),
    "raw": (RAW, ("problem",)),
}


def template_fields(template: str) -> tuple[str, ...]:
    """The keyword fields `build_prompt(template, ...)` needs, e.g. ("category",)."""
    return _lookup(template)[1]


def build_prompt(template: str, **fields: str) -> str:
    """The user text of one example for a task template.

    Args:
      template: "detection" (field `category`), "classification" (field `subject`, one of
        CLASSIFICATION_SUBJECTS), "grounding" / "grounding_eval" (field `instruction`), or "raw"
        (field `problem`: the dataset's text, returned unchanged).
      **fields: exactly the template's fields; missing or unknown ones raise ValueError.
    """
    tmpl, needed = _lookup(template)
    missing = [f for f in needed if f not in fields]
    unknown = sorted(set(fields) - set(needed))
    if missing or unknown:
        raise ValueError(
            f"prompt template {template!r} takes fields {list(needed)}; "
            f"missing {missing}, unknown {unknown}"
        )
    values = {k: str(v) for k, v in fields.items()}
    if template == "classification":
        subject = values.pop("subject")
        if subject not in CLASSIFICATION_SUBJECTS:
            raise ValueError(
                f"unknown classification subject {subject!r}; choose one of "
                f"{sorted(CLASSIFICATION_SUBJECTS)} (config.input.classification_subject)"
            )
        values["subject_sentence"] = CLASSIFICATION_SUBJECTS[subject]
    # Values are inserted verbatim: a "$" or "{" in a category name is not expanded again.
    return tmpl.substitute(values)


def in_frame(question: str, frame: str) -> str:
    """The question asking for boxes in `frame` (a vrft_jax.box_frames name).

    "relative_1000": unchanged. "absolute_pixels": the reference's 0..1000 phrase of the
    detection prompt and the grounding sentence are rewritten to ask for absolute pixel
    coordinates; other text is kept as written (a custom row that still mentions 1000 is logged
    once).
    """
    box_frames.check_frame(frame)
    if frame == box_frames.RELATIVE:
        return question
    out = question.replace(_DETECTION_RELATIVE, _DETECTION_PIXELS)
    out = out.replace(_GROUNDING_RELATIVE, _GROUNDING_PIXELS)
    global _warned_unconverted
    if "1000" in out and not _warned_unconverted:
        _warned_unconverted = True
        logging.warning(
            "a prompt for an absolute-pixel model still mentions 1000 (not the reference's "
            "wording, so not rewritten): %r",
            out[:200],
        )
    return out


def _lookup(template):
    if template not in TEMPLATES:
        raise ValueError(
            f"unknown prompt template {template!r}; choose one of {sorted(TEMPLATES)} "
            "(config.input.prompt_template)"
        )
    return TEMPLATES[template]
