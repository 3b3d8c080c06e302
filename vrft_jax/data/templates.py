"""The `problem` texts sources put in their examples, built from `vrft_jax.prompts`.

The texts equal the reference's published rows (prompt wording in vrft_jax/prompts.py), so an
example from a COCO/TFDS/LISA source reads exactly like the matching ViRFT row; feed them to the
model with `config.input.prompt_template = "raw"`.
"""

from vrft_jax import prompts

# The demo's classification sentences (same pattern as the reference's subjects).
SHAPES_SENTENCE = (
    "This is an image containing a shape. Please identify the shape based on the image."
)
COLOURS_SENTENCE = (
    "This is an image containing a shape. Please identify the colour of the shape based on the"
    " image."
)


def detection_problem(category: str) -> str:
    return prompts.build_prompt("detection", category=category)


def classification_problem(subject: str) -> str:
    """subject: a key of prompts.CLASSIFICATION_SUBJECTS (aircraft, flowers, pets, cars) or
    "shapes" / "colours" (the synthetic demo)."""
    if subject in ("shapes", "colours"):
        sentence = SHAPES_SENTENCE if subject == "shapes" else COLOURS_SENTENCE
        return prompts.CLASSIFICATION.substitute(subject_sentence=sentence)
    return prompts.build_prompt("classification", subject=subject)


def grounding_problem(instruction: str) -> str:
    """The LISA training text (no period after the instruction, as grpo_lisa.py)."""
    return prompts.build_prompt("grounding", instruction=instruction)
