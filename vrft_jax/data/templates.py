"""Prompt texts with the reference's wording (docs: visual_rft_reference.md section 2).

`vrft_jax.prompts` owns the templates for the model side; these builders produce the `problem`
strings exactly as Visual-RFT's published rows carry them, so a source's examples match the rows.
"""

_ANSWER_RULES = (
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    "The output answer format should be as follows:\n"
)

# Per-data-set first sentence of the classification prompt (aircraft and flowers are the
# reference's; pets and cars come from a third-party eval script).
CLASSIFICATION_SUBJECTS = {
    "aircraft": "This is an image containing an aircraft. "
    "Please identify the model of the aircraft based on the image.",
    "flowers": "This is an image containing a plant. "
    "Please identify the species of the plant based on the image.",
    "pets": "This is an image containing a pet. "
    "Please identify the species of the pet based on the image.",
    "cars": "This is an image containing a car. "
    "Please identify the model of the car based on the image.",
    "shapes": "This is an image containing a shape. Please identify the shape based on the image.",
}


def detection_problem(category: str) -> str:
    return (
        f"Detect all objects belonging to the category '{category}' in the image, and provide the "
        "bounding boxes (between 0 and 1000, integer) and confidence (between 0 and 1, with two "
        "decimal places).\n"
        f"If no object belonging to the category '{category}' in the image, return 'No Objects'.\n"
        + _ANSWER_RULES
        + "<think> ... </think> <answer>[{'Position': [x1, y1, x2, y2], 'Confidence': number}, "
        "...]</answer>\n"
        "Please strictly follow the format."
    )


def classification_problem(subject: str) -> str:
    """subject: a key of CLASSIFICATION_SUBJECTS, or a full first sentence."""
    sentence = CLASSIFICATION_SUBJECTS.get(subject, subject)
    return (
        f"{sentence}\n" + _ANSWER_RULES + "<think> ... </think> <answer>species name</answer>\n"
        "Please strictly follow the format."
    )


def grounding_problem(instruction: str) -> str:
    question = (
        f"Output the bounding box in the image corresponding to the instruction: {instruction}"
    )
    return (
        f"{question} Output the thinking process in <think> </think> and your grouding box. "
        'Following "<think> thinking process </think>\n<answer>(x1,y1),(x2,y2)</answer>)" format.'
    )
