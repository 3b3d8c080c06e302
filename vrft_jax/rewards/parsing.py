"""Host-side reward parsing: tags, answers, and padded numpy arrays for the jnp kernels.

Everything here takes whatever text the model wrote and never raises: text that cannot be read is
"no prediction" (`valid=False`), which every reward scores 0. Choices that differ from the
reference (Visual-RFT `grpo*.py`, see docs) are marked "Reference:".

Boxes come out in the ground truth's frame, 0..1000 (`box_frames.RELATIVE`): an answer written
in another frame (Qwen2.5-VL's absolute pixels) is converted with its image's resized size first.

Shape letters: N completions, P predicted boxes (padded), M ground-truth boxes (padded).
"""

import ast
import json
import math
import re
from typing import NamedTuple

import numpy as np

from vrft_jax import box_frames

COORD_MAX = box_frames.RELATIVE_SCALE  # parsed boxes are 0..1000, scaled by image width/height
MAX_ANSWER_CHARS = 20_000  # longer answers are not parsed (a 256-token answer is ~1-2k chars)
_MAX_REPAIR_TRIES = 4  # cut points tried by truncation repair (each is a full parse)

# Reference: the same pattern with re.fullmatch(..., re.DOTALL); we also strip the completion so a
# trailing newline or space does not cost the format reward.
_FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
# Reference: the detection and classification files search without DOTALL, so an answer that spans
# lines is missed and scores 0 (or falls back to the whole completion). We allow newlines.
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# "No Objects" (any case, optional quotes/punctuation, "Object" singular) means an empty detection.
_NO_OBJECTS_RE = re.compile(r"[\s'\"`.]*no\s*objects?[\s'\"`.!]*", re.IGNORECASE)
_NUM = r"[-+]?\d+(?:\.\d+)?"
_POINTS_BOX_RE = re.compile(
    rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"
)
_LIST_BOX_RE = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")


class ParsedBoxes(NamedTuple):
    """One parsed answer: boxes float32 [K, 4] (x1, y1, x2, y2 in 0..1000, whatever frame the
    answer was written in), conf float32 [K].

    valid=False means the answer could not be read (no tag, bad syntax, a bad entry); an empty but
    valid answer (`[]`, "No Objects") has K = 0 and valid=True.
    """

    boxes: np.ndarray
    conf: np.ndarray
    valid: bool


INVALID = ParsedBoxes(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), False)
EMPTY = ParsedBoxes(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), True)


def has_format(completion) -> bool:
    """True if the stripped completion is exactly `<think>...</think> <answer>...</answer>`."""
    if not isinstance(completion, str):
        return False
    return _FORMAT_RE.fullmatch(completion.strip()) is not None


def extract_answer(completion) -> str | None:
    """The content of the first `<answer>...</answer>` (newlines allowed), stripped; None if absent.

    Reference: a completion without the tags fell back to the whole completion, so e.g. a class name
    mentioned in `<think>` earned credit. Here no answer tag means no prediction.
    """
    if not isinstance(completion, str):
        return None
    match = _ANSWER_RE.search(completion)
    return None if match is None else match.group(1).strip()


def solution_answer(solution) -> str:
    """The dataset's solution: the `<answer>` content if tagged, else the whole stripped string."""
    if not isinstance(solution, str):
        return ""
    answer = extract_answer(solution)
    return solution.strip() if answer is None else answer


def _number(value) -> float | None:
    """A finite float from a JSON/Python number; None for bools, strings, NaN, inf, huge ints."""
    kind = type(value)  # exact types: bool (an int subclass) is not a number here
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is not int:
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def _load(text: str):
    """JSON (double or swapped single quotes), then a Python literal; None when nothing reads.

    Reference: replaced every ' by " and used json.loads, which also accepts NaN and Infinity; those
    still load here and are then rejected as non-finite.
    """
    # json on the quote-swapped text first: the same result as a literal for the lists we expect
    # (no quotes inside strings), and ~30x faster than ast.literal_eval.
    swapped = text.replace("'", '"')
    attempts = [(json.loads, swapped), (json.loads, text), (ast.literal_eval, text)]
    if swapped == text:
        attempts = attempts[1:]
    for loader, candidate in attempts:
        try:
            return loader(candidate)
        except Exception:  # any parse failure (incl. RecursionError, MemoryError) = unreadable
            continue
    return None


def _collapse_double_brackets(text: str) -> str:
    """`[[` -> `[` and `]]` -> `]`, as the reference does before parsing: a doubly wrapped list
    `[[{...}]]` and a doubly wrapped box `'Position': [[x1, y1, x2, y2]]` then read as usual. An
    answer that read without it reads the same: only a string value (never scored) could hold
    `[[` or `]]`."""
    return text.replace("[[", "[").replace("]]", "]")


def _load_with_repair(text: str):
    """Load a list; a truncated one (not ending in `]`) is cut after its last complete entry."""
    loaded = _load(text)
    if loaded is not None or not text.startswith("[") or text.endswith("]"):
        return loaded
    end = len(text)
    for _ in range(_MAX_REPAIR_TRIES):
        end = text.rfind("}", 0, end)
        if end < 0:
            return None
        loaded = _load(text[: end + 1] + "]")
        if isinstance(loaded, list):
            return loaded
    return None


def _entry(item, need_confidence: bool) -> tuple[tuple[float, ...], float] | None:
    """(box, confidence) from `{'Position': [x1, y1, x2, y2], 'Confidence': c}`; None if bad.

    Keys match case-insensitively. Coordinates are clipped to 0..1000 and confidences to [0, 1]
    later, after de-duplication on the raw values.
    """
    if not isinstance(item, dict):
        return None
    position, confidence = item.get("Position"), item.get("Confidence")
    if position is None or confidence is None:  # slow path: other capitalisations of the keys
        fields = {k.lower(): v for k, v in item.items() if isinstance(k, str)}
        position, confidence = fields.get("position"), fields.get("confidence")
    if not isinstance(position, list | tuple) or len(position) != 4:
        return None
    box = tuple([_number(v) for v in position])
    if None in box:
        return None
    if not need_confidence:
        return box, 1.0
    confidence = _number(confidence)
    if confidence is None:
        return None
    return box, confidence


def _relative_clipped(boxes, frame, size) -> np.ndarray:
    """Boxes [K, 4] read in `frame` -> 0..1000, clipped to the image, float32. Clipping after the
    conversion bounds a pixel answer by its own image (W, H), not by 1000."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    size = None if size is None else np.asarray(size, np.float64)
    with np.errstate(over="ignore"):  # a huge finite pixel value -> inf -> clipped to 1000
        relative = box_frames.to_relative(boxes, frame, size)
    return np.clip(relative, 0.0, COORD_MAX).astype(np.float32)


def parse_detection_answer(
    answer, *, is_solution: bool = False, frame: str = box_frames.RELATIVE, size=None
) -> ParsedBoxes:
    """Parse a detection answer (the text inside `<answer>`) into boxes and confidences.

    Accepted: a list of `{'Position': [x1, y1, x2, y2], 'Confidence': c}` in JSON or Python-literal
    syntax (a lone dict or a tuple also counts), `[]` or "No Objects" (empty, valid). Doubled
    brackets (`[[{...}]]`, `'Position': [[x1, y1, x2, y2]]`) read as single ones, as in the
    reference. A list that is cut off (does not end in `]`) is repaired at its last complete
    entry. Any entry that is not such a dict, or has a non-numeric / non-finite coordinate or
    confidence, makes the whole answer invalid. Exact duplicate boxes are dropped, first kept
    (predictions only). Solutions need no confidence (their confidences are unused).
    frame / size: the frame the answer is written in and, for "absolute_pixels", the (W, H) of
    the image as the processor resized it; the boxes returned are 0..1000 either way.
    """
    if not isinstance(answer, str):
        return INVALID
    text = answer.strip()
    if _NO_OBJECTS_RE.fullmatch(text):
        return EMPTY
    if len(text) > MAX_ANSWER_CHARS:
        return INVALID
    loaded = _load_with_repair(_collapse_double_brackets(text))
    if isinstance(loaded, dict):
        loaded = [loaded]
    if not isinstance(loaded, list | tuple):
        return INVALID
    boxes, confs, seen = [], [], set()
    for item in loaded:
        entry = _entry(item, need_confidence=not is_solution)
        if entry is None:
            return INVALID
        box, confidence = entry
        if not is_solution and box in seen:
            continue  # Reference: remove_duplicates keeps the first of exactly equal boxes.
        seen.add(box)
        boxes.append(box)
        confs.append(confidence)
    if not boxes:
        return EMPTY
    boxes = _relative_clipped(boxes, frame, size)
    confs = np.clip(np.asarray(confs, np.float64), 0.0, 1.0).astype(np.float32)
    return ParsedBoxes(boxes, confs, True)


class SolutionError(ValueError):
    """A dataset solution that cannot be read; the message names what is wrong (no file or row:
    the data source adds those)."""


def parse_detection_solution(answer: str) -> tuple[tuple[float, float, float, float], ...]:
    """The ground-truth boxes of a detection solution (the text inside `<answer>`), strictly.

    Unlike model answers (`parse_detection_answer`), a solution is never repaired: it must be
    "No Objects" / `[]`, or a list of dicts (a lone dict counts) whose `Position` is four finite
    numbers. Raises SolutionError saying which entry and why.
    """
    text = answer.strip() if isinstance(answer, str) else ""
    if _NO_OBJECTS_RE.fullmatch(text):
        return ()
    loaded = _load(text) if len(text) <= MAX_ANSWER_CHARS else None
    if isinstance(loaded, dict):
        loaded = [loaded]
    if not isinstance(loaded, list | tuple):
        raise SolutionError(f"detection answer is not a list of boxes: {_short(text)}")
    boxes = []
    for k, item in enumerate(loaded, 1):
        position = None
        if isinstance(item, dict):
            fields = {str(key).lower(): v for key, v in item.items()}
            position = fields.get("position")
        if not isinstance(position, list | tuple):
            raise SolutionError(f"box {k} has no 'Position' list: {_short(str(item))}")
        box = tuple(_number(v) for v in position)
        if len(box) != 4 or None in box:
            raise SolutionError(
                f"box {k} 'Position' {list(position)} is not four finite numbers [x1, y1, x2, y2]"
            )
        boxes.append(box)
    return tuple(boxes)


def parse_grounding_solution(answer: str) -> tuple[float, float, float, float]:
    """The box of a grounding solution, `(x1,y1),(x2,y2)` or `[x1, y1, x2, y2]`; SolutionError
    when there is none."""
    parsed = parse_grounding_answer(answer)
    if not parsed.valid:
        raise SolutionError(f"grounding answer has no box (x1,y1),(x2,y2): {_short(answer)}")
    return tuple(float(v) for v in parsed.boxes[0])


def _short(text: str, limit: int = 80) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_grounding_answer(answer, *, frame: str = box_frames.RELATIVE, size=None) -> ParsedBoxes:
    """The first box in a grounding answer, `(x1,y1),(x2,y2)` or `[x1, y1, x2, y2]`, as 0..1000.

    Integers or decimals, written in `frame` (with `size`, the resized (W, H), for
    "absolute_pixels"); converted to 0..1000, then clipped to 0..1000. Only the first box counts,
    so listing several boxes gains nothing. Reference: integers in `(x1,y1),(x2,y2)` only, and with
    two or more boxes it paired the wrong corners.
    """
    if not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
        return INVALID
    matches = [m for m in (_POINTS_BOX_RE.search(answer), _LIST_BOX_RE.search(answer)) if m]
    if not matches:
        return INVALID
    first = min(matches, key=lambda m: m.start())
    box = [float(v) for v in first.groups()]
    if not all(math.isfinite(v) for v in box):
        return INVALID
    return ParsedBoxes(_relative_clipped([box], frame, size), np.ones((1,), np.float32), True)


def bucket(size: int, minimum: int = 4) -> int:
    """The next power of two >= size (at least `minimum`), to bound the number of jit compiles."""
    result = minimum
    while result < size:
        result *= 2
    return result


def pad_boxes(parsed: list[ParsedBoxes], num_rows: int, num_boxes: int):
    """Stack answers into padded arrays; rows past len(parsed) are invalid padding.

    Returns boxes float32 [N, P, 4], conf float32 [N, P], mask bool [N, P], valid bool [N], with
    N = num_rows and P = num_boxes. An answer with more than P boxes keeps its P most confident
    (stable order), so the kernels' box counts then see only those P.
    """
    boxes = np.zeros((num_rows, num_boxes, 4), np.float32)
    conf = np.zeros((num_rows, num_boxes), np.float32)
    mask = np.zeros((num_rows, num_boxes), bool)
    valid = np.zeros((num_rows,), bool)
    for i, item in enumerate(parsed):
        if len(item.conf) > num_boxes:
            keep = np.sort(np.argsort(-item.conf, kind="stable")[:num_boxes])
            item = ParsedBoxes(item.boxes[keep], item.conf[keep], item.valid)
        k = len(item.conf)
        boxes[i, :k], conf[i, :k], mask[i, :k], valid[i] = item.boxes, item.conf, True, item.valid
    return boxes, conf, mask, valid


class DetectionBatch(NamedTuple):
    """Padded detection arrays for `kernels.detection_scores` (all numpy).

    pred_boxes float32 [N, P, 4], pred_conf float32 [N, P], pred_mask bool [N, P],
    gt_boxes float32 [N, M, 4], gt_mask bool [N, M], valid bool [N] (prediction and solution read).
    """

    pred_boxes: np.ndarray
    pred_conf: np.ndarray
    pred_mask: np.ndarray
    gt_boxes: np.ndarray
    gt_mask: np.ndarray
    valid: np.ndarray


def parse_detection_batch(
    completions,
    solutions,
    *,
    num_rows: int | None = None,
    num_boxes: int | None = None,
    frame: str = box_frames.RELATIVE,
    image_sizes=None,
) -> DetectionBatch:
    """Parse N completions and their solutions into one padded DetectionBatch.

    num_rows / num_boxes default to power-of-two buckets of N and of the largest box count, so the
    jitted kernel compiles once per bucket. A solution that cannot be read scores 0 (valid=False).
    frame: the frame the completions are written in; image_sizes [N, 2]: each completion's resized
    image (W, H), needed for "absolute_pixels". Solutions are always 0..1000.
    """
    sizes = frame_sizes(frame, image_sizes, len(completions))
    preds = [
        parse_detection_answer(extract_answer(c), frame=frame, size=size)
        for c, size in zip(completions, sizes, strict=True)
    ]
    gts = [parse_detection_answer(solution_answer(s), is_solution=True) for s in solutions]
    rows = num_rows or bucket(len(preds), minimum=8)
    most = max([len(p.conf) for p in preds + gts] + [1])
    width = num_boxes or bucket(most)
    pred_boxes, pred_conf, pred_mask, pred_valid = pad_boxes(preds, rows, width)
    gt_boxes, _, gt_mask, gt_valid = pad_boxes(gts, rows, width)
    valid = pred_valid & gt_valid
    return DetectionBatch(pred_boxes, pred_conf, pred_mask, gt_boxes, gt_mask, valid)


def frame_sizes(frame: str, image_sizes, n: int) -> list:
    """The per-completion (W, H) list for `frame`: n Nones for 0..1000 answers; for pixel answers
    `image_sizes` checked to be n positive (W, H) pairs (ValueError otherwise)."""
    box_frames.check_frame(frame)
    if frame == box_frames.RELATIVE:
        return [None] * n
    if image_sizes is None:
        raise ValueError(f"{frame} answers need image_sizes: the resized (W, H) of each image")
    sizes = np.asarray(image_sizes, np.float64)
    if sizes.shape != (n, 2) or not (sizes > 0).all():
        raise ValueError(f"image_sizes must be {n} positive (W, H) pairs, got shape {sizes.shape}")
    return list(sizes)


def normalize_label(text) -> str:
    """Lowercase, trim, drop whitespace, `_` and `-` ("Japanese_Chin" == "japanese chin")."""
    if not isinstance(text, str):
        return ""
    return re.sub(r"[\s_\-]+", "", text.strip().lower())
