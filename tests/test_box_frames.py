"""Box frames: Qwen2-VL's 0..1000 boxes and Qwen2.5-VL's absolute pixels of the resized image.

The same physical box must earn the same rewards and mAP in either frame, for images the processor
resizes to other aspect ratios; prompts must ask in the model's frame; the rollout, SFT and
evaluation paths must convert with each example's own resized size.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from coco_fixture import make_coco

from configs import base
from vrft_jax import box_frames, config_utils, prompts, rewards, rollout, sft
from vrft_jax.data.example import Example, detection_solution, grounding_solution
from vrft_jax.evals import GroundingEvaluator, evaluate_detections, make_evaluators
from vrft_jax.inputs import PromptProcessor

PIXELS, RELATIVE = box_frames.PIXELS, box_frames.RELATIVE
MIN_PIXELS, MAX_PIXELS = 3136, 401408  # configs/base.py's (the paper's)
# Original (W, H): square, wide, tall (none a multiple of 28, so each side is rounded) and one over
# max_pixels (scaled down).
ORIGINAL_SIZES = [(500, 500), (1000, 300), (250, 900), (1500, 1000)]
OPTIONS = {"iou_threshold": 0.5, "iou_denominator": "max", "grounding": "iou"}
DETECTION = (("detection_iou", 1.0), ("detection_confidence", 1.0))


def make_processor(tokenizer_dir, frame):
    return PromptProcessor(
        tokenizer_dir, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, box_frame=frame
    )


@pytest.fixture(scope="module")
def pixel_processor(tokenizer_dir):
    return make_processor(tokenizer_dir, PIXELS)


@pytest.fixture(scope="module")
def resized(pixel_processor):
    """Original (W, H) -> (W, H) of the patch grid the real image processor produces."""
    images = [np.zeros((h, w, 3), np.uint8) for w, h in ORIGINAL_SIZES]
    batch = pixel_processor.encode_batch([(images, "q")])
    sizes = pixel_processor.image_sizes(batch["image_grid_thw"])
    return {orig: tuple(int(v) for v in size) for orig, size in zip(ORIGINAL_SIZES, sizes)}


def test_resized_size_is_the_patch_grid(pixel_processor, resized):
    for (w, h), size in resized.items():
        assert size[0] % 28 == 0 and size[1] % 28 == 0 and size != (w, h)
        assert pixel_processor.resized_size(w, h) == size
    assert resized[(1500, 1000)][0] * resized[(1500, 1000)][1] <= MAX_PIXELS


def detection_text(boxes, confs):
    items = ", ".join(
        f"{{'Position': [{', '.join(repr(float(v)) for v in b)}], 'Confidence': {c}}}"
        for b, c in zip(boxes, confs)
    )
    return f"<think>look</think><answer>[{items}]</answer>"


def list_box_text(box):
    return f"<answer>{np.asarray(box).tolist()}</answer>"


def test_same_physical_box_same_rewards_in_either_frame(resized):
    """Answers written in 0..1000 and the same boxes in pixels of each resized image score the
    same; read in the wrong frame they do not (so the conversion is what makes them agree)."""
    gt = [(100, 200, 400, 600), (550, 100, 900, 350)]
    # Two near hits, one false positive, one box past the right edge (clipped to the image).
    pred = np.array(
        [[110, 190, 420, 610], [560, 120, 880, 340], [0, 0, 50, 50], [700, 700, 1040, 990]],
        np.float64,
    )
    confs = [0.9, 0.6, 0.3, 0.2]
    solution = detection_solution(gt)
    ground_pred, ground_gt = np.array([120.0, 180.0, 410.0, 590.0]), grounding_solution(gt[0])
    rel_texts, pix_texts, sizes = [], [], []
    for size in resized.values():
        rel_texts += [detection_text(pred, confs), list_box_text(ground_pred)]
        pixel_pred, pixel_ground = (
            box_frames.from_relative(b, PIXELS, np.array(size)) for b in (pred, ground_pred)
        )
        pix_texts += [detection_text(pixel_pred, confs), list_box_text(pixel_ground)]
        sizes += [size, size]
    solutions = [solution, ground_gt] * len(resized)
    specs = DETECTION + (("grounding_iou", 1.0),)
    _, rel = rewards.score(rel_texts, solutions, specs, OPTIONS)
    _, pix = rewards.score(pix_texts, solutions, specs, OPTIONS, frame=PIXELS, image_sizes=sizes)
    _, wrong = rewards.score(pix_texts, solutions, specs, OPTIONS)  # pixels read as 0..1000
    det, ground = slice(0, None, 2), slice(1, None, 2)
    checks = [("detection_iou", det), ("detection_confidence", det), ("grounding_iou", ground)]
    for name, rows in checks:
        assert ((rel[name][rows] > 0.05) & (rel[name][rows] < 0.95)).all(), (name, rel[name])
        # Boxes through a float64 x*W/1000*1000/W round trip, then float32 IoU maths: a few ulp.
        np.testing.assert_allclose(pix[name][rows], rel[name][rows], rtol=1e-6, err_msg=name)
        assert not np.allclose(wrong[name][rows], rel[name][rows], atol=1e-3), name
    # GIoU + 1 (the reference's LISA reward) too: it also reads the enclosing box.
    modes = [{**OPTIONS, "grounding": "giou_plus_one"}]
    g_rel = rewards.score(rel_texts[1::2], solutions[1::2], (("grounding_iou", 1.0),), *modes)
    g_pix = rewards.score(
        pix_texts[1::2], solutions[1::2], (("grounding_iou", 1.0),), *modes, frame=PIXELS,
        image_sizes=sizes[1::2],
    )  # fmt: skip
    np.testing.assert_allclose(g_pix[0], g_rel[0], rtol=1e-6)


def test_conversions_numpy_jnp_and_bad_input():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 1000, (5, 3, 4))
    sizes = rng.integers(1, 40, (5, 1, 2)) * 28
    pixels = box_frames.from_relative(boxes, PIXELS, sizes)
    assert pixels.shape == (5, 3, 4) and (pixels[..., 2] <= sizes[..., 0]).all()
    np.testing.assert_allclose(box_frames.to_relative(pixels, PIXELS, sizes), boxes, rtol=1e-12)
    # jit-able on jnp arrays; float32 against the float64 numpy result (a few ulp).
    jitted = jax.jit(lambda b, s: box_frames.to_relative(b, PIXELS, s))
    got = jitted(jnp.asarray(pixels, jnp.float32), jnp.asarray(sizes))
    np.testing.assert_allclose(np.asarray(got), boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(box_frames.to_relative(boxes, RELATIVE), boxes)
    grid = np.array([[1, 34, 46], [1, 22, 72]])  # (t, h, w) patches
    np.testing.assert_array_equal(box_frames.grid_sizes(grid, 14), [[644, 476], [1008, 308]])
    # Model text: a huge finite pixel value overflows the conversion to inf, then is clipped.
    huge = "[{'Position': [1e308, 0, 1e308, 5], 'Confidence': 0.5}]"
    parsed = rewards.parse_detection_answer(huge, frame=PIXELS, size=(28, 56))
    np.testing.assert_allclose(parsed.boxes, [[1000, 0, 1000, 5000 / 56]], rtol=1e-6)
    with pytest.raises(ValueError, match="resized image size"):
        box_frames.to_relative(boxes, PIXELS)
    with pytest.raises(ValueError, match="box frame='pixels'"):
        box_frames.to_relative(boxes, "pixels")
    with pytest.raises(ValueError, match="image_sizes"):
        rewards.score(["x"], ["<answer>(1,2),(3,4)</answer>"], (("grounding_iou", 1.0),),
                      OPTIONS, frame=PIXELS)  # fmt: skip
    with pytest.raises(ValueError, match="2 positive"):
        rewards.score(["x", "y"], ["s", "s"], DETECTION, OPTIONS, frame=PIXELS,
                      image_sizes=[(28, 28)])  # fmt: skip


def test_frame_per_family_override_and_bad_value(tokenizer_dir):
    assert box_frames.resolve("auto", "qwen2_vl") == RELATIVE
    assert box_frames.resolve("auto", "qwen2_5_vl") == PIXELS
    assert box_frames.resolve("auto", "qwen3_vl") == RELATIVE
    assert box_frames.resolve("relative_1000", "qwen2_5_vl") == RELATIVE  # forced
    assert box_frames.model_type(object()) == "qwen2_vl"  # configs before the model_type field
    with pytest.raises(ValueError, match="model_type 'llava'"):
        box_frames.resolve("auto", "llava")
    config = base.get_config()
    qwen25 = types.SimpleNamespace(model_type="qwen2_5_vl")
    assert PromptProcessor.from_config(config, qwen25).box_frame == PIXELS
    assert PromptProcessor.from_config(config).box_frame == RELATIVE
    config.model.box_frame = "pixels"
    errors = config_utils.check_values(config)
    assert errors == [
        "config.model.box_frame='pixels': expected one of auto, relative_1000, absolute_pixels"
    ]
    with pytest.raises(ValueError, match="config.model.box_frame='pixels'"):
        PromptProcessor.from_config(config, qwen25)


def test_prompts_ask_in_the_model_frame(pixel_processor):
    detection = prompts.build_prompt("detection", category="dog")
    assert "between 0 and 1000" in detection
    asked = prompts.in_frame(detection, PIXELS)
    assert "(in absolute pixel coordinates of the image, integer)" in asked
    assert "1000" not in asked and "category 'dog'" in asked
    assert prompts.in_frame(asked, PIXELS) == asked  # idempotent
    assert prompts.in_frame(detection, RELATIVE) == detection
    for template in ("grounding", "grounding_eval"):
        text = prompts.build_prompt(template, instruction="the dog")
        assert prompts.in_frame(text, PIXELS).startswith(
            "Output the bounding box (in absolute pixel coordinates) in the image corresponding"
        )
    assert "absolute pixel coordinates of the image" in pixel_processor.chat_text(detection, 1)


def pixel_answers(boxes_by_example, sizes):
    """Detection completions writing each example's boxes (0..1000) in its image's pixels."""
    out = []
    for boxes, size in zip(boxes_by_example, sizes):
        pixels = box_frames.from_relative(np.asarray(boxes, float).reshape(-1, 4), PIXELS, size)
        empty = "<think>look</think><answer>No Objects</answer>"
        out.append(detection_text(pixels, [0.9] * len(pixels)) if len(pixels) else empty)
    return out


def test_coco_map_one_for_pixel_answers_equal_to_the_ground_truth(pixel_processor, resized):
    """pycocotools on images of four aspect ratios: the GT boxes written in each resized image's
    pixels give mAP 1.0; the same texts read as 0..1000 do not."""
    gt_dataset = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}
    examples, answers = [], []
    for image_id, (w, h) in enumerate(ORIGINAL_SIZES, 1):
        gt_dataset["images"].append({"id": image_id, "width": w, "height": h})
        original = [(0.1 * w, 0.2 * h, 0.5 * w, 0.9 * h), (0.6 * w, 0.05 * h, 0.95 * w, 0.4 * h)]
        for x1, y1, x2, y2 in original:
            gt_dataset["annotations"].append({
                "id": len(gt_dataset["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })  # fmt: skip
        examples.append(Example(image=None, problem="p", task="detection", solution="",
                                image_id=image_id, image_size=(w, h), category_id=1))  # fmt: skip
        # Pixels of the resized image (the grid from the real image processor).
        answers.append(np.asarray(original) * np.tile(np.divide(resized[(w, h)], (w, h)), 2))
    completions = [detection_text(a, [0.9, 0.8]) for a in answers]
    common = dict(gt_dataset=gt_dataset, category_ids=[1])
    pixel = evaluate_detections(
        examples, completions, box_frame=PIXELS, resized_size=pixel_processor.resized_size,
        **common,
    )  # fmt: skip
    assert pixel["map"] == pytest.approx(1.0) and pixel["coco_AP"] == pytest.approx(1.0)
    assert evaluate_detections(examples, completions, **common)["map"] < 0.5


def test_evaluators_read_pixel_answers(tmp_path, pixel_processor):
    """make_evaluators -> the COCO evaluator and the grounding evaluator, with the resized size of
    each decoded image: ground truth written in pixels scores mAP 1 and mIoU 1."""
    ann, root = make_coco(tmp_path)  # 200 x 100 images -> 196 x 112 for the model
    config = base.get_config()
    config.data.update(source="coco", path=ann, image_root=root, categories=("cat", "dog"))
    frame = dict(box_frame=PIXELS, resized_size=pixel_processor.resized_size)
    (evaluator,) = make_evaluators(config, str(tmp_path / "eval"), **frame)

    def predict(batch):
        grid = pixel_processor.encode_batch([([e.image], "q") for e in batch])["image_grid_thw"]
        return pixel_answers([e.boxes for e in batch], pixel_processor.image_sizes(grid))

    metrics = dict(evaluator.run(predict))
    assert metrics["detection/map"] == pytest.approx(1.0)

    truth = (100, 200, 500, 900)
    examples = [
        Example(image=np.zeros((h, w, 3), np.uint8), problem="p", task="grounding", solution="",
                example_id=str(k), boxes=(truth,))
        for k, (w, h) in enumerate([(200, 100), (90, 250)])
    ]  # fmt: skip
    grounding = GroundingEvaluator(examples, str(tmp_path / "g"), batch_size=2, **frame)

    def ground(batch):
        grid = pixel_processor.encode_batch([([e.image], "q") for e in batch])["image_grid_thw"]
        boxes = box_frames.from_relative(
            np.array([truth], float), PIXELS, pixel_processor.image_sizes(grid)
        )
        return [f"<answer>({b[0]},{b[1]}),({b[2]},{b[3]})</answer>" for b in boxes.tolist()]

    metrics = dict(grounding.run(ground))
    assert metrics["grounding/miou"] == pytest.approx(1.0, abs=1e-6)


class PixelModel:
    """A scripted Qwen2.5-VL sampler: for each prompt it reads the image grid it was given and
    writes, per sample g, `answers(g, solution boxes, (W, H))`, as the real model would see it."""

    def __init__(self, processor, examples, answers, G):
        self.processor, self.examples, self.answers, self.G = processor, examples, answers, G

    def __call__(self, input_ids, attention_mask, pixel_values, image_grid_thw, **kw):
        sizes = self.processor.image_sizes(image_grid_thw)
        texts = [self.answers(g, e, size) for e, size in zip(self.examples, sizes)
                 for g in range(self.G)]  # fmt: skip
        return sampler_output(self.processor, texts, kw["max_new_tokens"])


def sampler_output(processor, texts, C):
    """The sampler's result (tokens, mask, logprobs [N, C]) for completions `texts`."""
    ids = [processor.tokenizer.encode(t) + [processor.special.im_end] for t in texts]
    tokens = np.full((len(ids), C), processor.special.pad, np.int32)
    mask = np.zeros_like(tokens)
    for i, row in enumerate(ids):
        tokens[i, : len(row)], mask[i, : len(row)] = row, 1
    return types.SimpleNamespace(tokens=tokens, mask=mask, logprobs=np.zeros((len(ids), C)))


def rollout_examples():
    """Visual-RFT-style rows (solutions in 0..1000) on a wide and a tall image."""
    det_boxes = ((100, 200, 400, 600), (550, 100, 900, 350))
    return [
        Example(image=np.zeros((100, 200, 3), np.uint8), problem=prompts.build_prompt(
            "detection", category="cat"), task="detection", solution=detection_solution(det_boxes),
            boxes=det_boxes),
        Example(image=np.zeros((250, 90, 3), np.uint8), problem=prompts.build_prompt(
            "grounding", instruction="the cat"), task="grounding",
            solution=grounding_solution((100, 200, 500, 900)), boxes=((100, 200, 500, 900),)),
    ]  # fmt: skip


def scripted_answer(g, example, size):
    """g=0: the solution's boxes in pixels of the resized image; g=1: the 0..1000 numbers as
    written (the wrong frame for a pixel model); g=2: the pixel boxes moved by 5% of the image."""
    boxes = np.asarray(example.boxes, float)
    if g != 1:
        boxes = box_frames.from_relative(boxes, PIXELS, size)
    if g == 2:
        boxes = boxes + np.tile(np.asarray(size) * 0.05, 2)
    if example.task == "grounding":
        x1, y1, x2, y2 = boxes[0].tolist()
        return f"<think>t</think><answer>({x1},{y1}),({x2},{y2})</answer>"
    return detection_text(boxes, [0.9] * len(boxes))


def test_rollout_scores_0_1000_rows_for_a_pixel_frame_model(tokenizer_dir):
    """Through make_rollout with a Qwen2.5-VL model config: the prompts ask for pixels and the
    rewards read the pixel answers against the rows' 0..1000 solutions."""
    config = base.get_config()
    config.grpo.G, config.sampler.max_new_tokens = 3, 160
    config.rewards = (("format", 1.0),) + DETECTION + (("grounding_iou", 1.0),)
    processor = PromptProcessor.from_config(config, types.SimpleNamespace(model_type="qwen2_5_vl"))
    assert processor.box_frame == PIXELS
    examples = rollout_examples()
    model = PixelModel(processor, examples, scripted_answer, config.grpo.G)
    out = rollout.make_rollout(model, processor, examples, config, rng=0)
    prompt_text = processor.tokenizer.decode(out.prompt_ids[0])
    assert "absolute pixel coordinates" in prompt_text and "1000" not in prompt_text
    assert out.prompts[0] in prompt_text  # samples.jsonl logs the question as asked
    per = out.per_reward
    # The exact pixel answer: full IoU and confidence reward (float32 rounding of the conversion).
    assert per["detection_iou"][0] == pytest.approx(1.0, abs=1e-6)
    assert per["detection_confidence"][0] == pytest.approx(0.9, abs=1e-6)
    assert per["grounding_iou"][3] == pytest.approx(1.0, abs=1e-6)
    # 0..1000 numbers from a pixel model, and shifted boxes, score less.
    assert per["detection_iou"][1] < 0.5 and per["grounding_iou"][4] < 0.5
    assert 0.0 < per["detection_iou"][2] < 0.9 and 0.0 < per["grounding_iou"][5] < 0.9
    assert out.advantages[0] > 0 > out.advantages[1]  # GRPO pushes toward the pixel answer


def test_sft_targets_are_written_in_the_model_frame(pixel_processor):
    """The SFT warm-up's targets for a pixel model are the rows' boxes in its resized image's
    pixels (integers), which the rewards read back to the 0..1000 solution boxes."""
    config = base.get_config()
    config.sampler.max_new_tokens = 64
    examples = rollout_examples()
    batch = sft.sft_batch(pixel_processor, examples, config)
    texts = pixel_processor.decode(batch["completion_ids"], batch["completion_mask"])
    sizes = pixel_processor.image_sizes(batch["image_grid_thw"][:2])
    assert texts[0].startswith("<answer>[{'Position': [") and texts[1].startswith("<answer> (")
    for text, example, size in zip(texts, examples, sizes):
        assert "." not in text  # integer pixels, as Qwen2.5-VL writes them
        if example.task == "detection":
            parsed = rewards.parse_detection_answer(
                rewards.extract_answer(text), frame=PIXELS, size=size
            )
        else:
            parsed = rewards.parse_grounding_answer(text, frame=PIXELS, size=size)
        # Rounding to whole pixels moves a coordinate by <= 0.5 px = 500 / side in 0..1000.
        tolerance = 500.0 / np.min(size) + 1e-3
        np.testing.assert_allclose(parsed.boxes, example.boxes, atol=tolerance)
    relative = sft.sft_target(examples[0], "", RELATIVE)
    assert relative == examples[0].solution  # 0..1000 models train on the rows as written


def test_held_out_evaluation_of_a_pixel_frame_model(tmp_path, pixel_processor):
    """evaluation.run_evals (greedy evaluators, held-out reward means, sampled rewards) with a
    scripted pixel model on synthetic detection (100 px images, resized to 112 px)."""
    from vrft_jax import evaluation
    from vrft_jax.data import make_source

    config = base.get_config()
    config.data.update(synthetic_task="detection", synthetic_size=100, num_eval_examples=6)
    config.rewards = (("format", 1.0),) + DETECTION
    config.eval.update(batch_size=4, num_samples=2)
    source = make_source(config.data, "eval", config.seed)
    truth = [source[i] for i in range(len(source))]
    assert any(e.boxes for e in truth) and truth[0].image_size == (100, 100)
    seen = []

    def generate(input_ids, attention_mask, pixel_values, image_grid_thw, **kw):
        k = kw.get("num_samples", 1)
        sizes = pixel_processor.image_sizes(image_grid_thw)[: len(input_ids)]
        rows = [truth[(len(seen) + b) % len(truth)] for b in range(len(input_ids))]
        seen.extend(rows)
        texts = pixel_answers([e.boxes for e in rows for _ in range(k)], np.repeat(sizes, k, 0))
        return sampler_output(pixel_processor, texts, kw["max_new_tokens"])

    metrics = evaluation.run_evals(config, str(tmp_path), pixel_processor, generate, "eval")
    assert metrics["detection/map"] == pytest.approx(1.0)
    for prefix in ("reward", "sampled"):  # GT written in pixels: full IoU and confidence reward
        assert metrics[f"{prefix}/detection_iou"] == pytest.approx(1.0, abs=1e-6)
