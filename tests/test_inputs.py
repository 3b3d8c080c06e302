"""Prompt inputs: chat template, image tokens, batching with left padding, bad image files."""

import os
import pathlib
import subprocess
import sys

import jinja2
import numpy as np
import PIL.Image
import pytest
from import_blocker import blocking_prelude

from vrft_jax import buckets, inputs

MIN_PIXELS, MAX_PIXELS = 3136, 401408
# Sizes (H, W) chosen so every image gets a different patch grid.
SIZES = [(60, 90), (200, 100), (33, 160), (120, 120), (28, 300), (150, 64)]


@pytest.fixture(scope="module")
def processor(tokenizer_dir):
    return inputs.PromptProcessor(
        tokenizer_dir, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, max_prompt_length=1024
    )


def random_image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def expected_ids(processor, text, grids):
    """What Qwen2VLProcessor does: repeat each <|image_pad|> in the *text*, then tokenize."""
    pieces = text.split("<|image_pad|>")
    assert len(pieces) == len(grids) + 1
    out = pieces[0]
    for (t, h, w), piece in zip(grids, pieces[1:]):
        out += "<|image_pad|>" * (t * h * w // 4) + piece
    return processor.tokenizer(out, add_special_tokens=False)["input_ids"]


def test_special_token_ids(processor):
    s = processor.special
    assert (s.pad, s.im_start, s.im_end, s.endoftext) == (151643, 151644, 151645, 151643)
    assert (s.vision_start, s.vision_end, s.image_pad) == (151652, 151653, 151655)
    assert s.eos == (151645, 151643)
    assert processor.merge_size == 2


def test_chat_text_equals_shipped_template(processor, tokenizer_dir):
    source = (pathlib.Path(tokenizer_dir) / "chat_template.jinja").read_text()
    # Hugging Face renders chat templates with these jinja settings.
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(source)
    for num_images, system in [(1, None), (3, "Be brief."), (0, None)]:
        messages = [{"role": "system", "content": system}] if system else []
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": "Q?"}]
        messages.append({"role": "user", "content": content})
        for gen in (True, False):
            want = template.render(messages=messages, add_generation_prompt=gen)
            got = processor.chat_text(
                "Q?", num_images, system_prompt=system, add_generation_prompt=gen
            )
            assert got == want
            hf = processor.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=gen
            )
            assert got == hf
    assert processor.chat_text("Q?", 1) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_single_example_token_counts_match_grid(processor):
    image = random_image(*SIZES[0], seed=0)
    batch = processor.encode_batch([([image], "What is this?")])
    grid = batch["image_grid_thw"]
    assert grid.shape == (1, 3) and grid.dtype == np.int32
    t, h, w = grid[0]
    assert (t, h, w) == (1, 4, 6)  # 60x90 -> smart_resize 56x84 -> 4x6 patches of 14
    assert batch["pixel_values"].shape == (t * h * w, inputs.PATCH_DIM)
    assert batch["pixel_values"].dtype == np.float32
    ids = batch["input_ids"][0]
    assert (ids == processor.special.image_pad).sum() == t * h * w // 4
    text = processor.chat_text("What is this?", 1)
    assert ids.tolist() == expected_ids(processor, text, grid.tolist())
    assert batch["attention_mask"].all()


def test_batch_of_1_to_3_images_left_padded(processor):
    examples = [
        ([random_image(*SIZES[0], seed=1)], "one image"),
        ([random_image(*SIZES[1], seed=2), random_image(*SIZES[2], seed=3)], "two images, longer"),
        ([random_image(*s, seed=4 + k) for k, s in enumerate(SIZES[3:])], "three"),
    ]
    batch = processor.encode_batch(examples)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    grids = batch["image_grid_thw"]
    assert ids.dtype == mask.dtype == np.int32
    assert ids.shape == mask.shape and ids.shape[0] == 3
    assert grids.shape == (6, 3)
    assert len({tuple(g) for g in grids.tolist()}) == 6  # all sizes differ
    assert batch["pixel_values"].shape == (grids.prod(axis=1).sum(), inputs.PATCH_DIM)

    first_image = 0
    patch_start = 0
    for row, (images, question) in enumerate(examples):
        n = len(images)
        row_grids = grids[first_image : first_image + n].tolist()
        # Left padding: zeros then ones in the mask, pad id where the mask is 0.
        length = int(mask[row].sum())
        assert (mask[row, -length:] == 1).all() and (mask[row, :-length] == 0).all()
        assert (ids[row, :-length] == 151643).all()
        # The unpadded row is exactly the single-example encoding.
        want = expected_ids(processor, processor.chat_text(question, n), row_grids)
        assert ids[row, -length:].tolist() == want
        assert (ids[row] == processor.special.image_pad).sum() == sum(
            t * h * w // 4 for t, h, w in row_grids
        )
        # Patches are concatenated example by example, image by image.
        for image, (t, h, w) in zip(images, row_grids):
            alone = processor.image_processor(
                images=[PIL.Image.fromarray(image)], return_tensors="np"
            )["pixel_values"]
            got = batch["pixel_values"][patch_start : patch_start + t * h * w]
            np.testing.assert_array_equal(got, alone)
            patch_start += t * h * w
        first_image += n
    assert mask[:, -1].all()  # every prompt ends at the right edge (generation continues there)
    assert int(mask.sum(axis=1).max()) == ids.shape[1]


def test_image_kinds_give_identical_inputs(processor, tmp_path):
    image = random_image(*SIZES[1], seed=7)
    path = tmp_path / "img.png"
    PIL.Image.fromarray(image).save(path)
    variants = [image, PIL.Image.fromarray(image), str(path), path, image / 255.0]
    batches = [processor.encode_batch([([v], "q")]) for v in variants]
    for b in batches[1:]:
        np.testing.assert_array_equal(b["input_ids"], batches[0]["input_ids"])
        np.testing.assert_allclose(b["pixel_values"], batches[0]["pixel_values"], atol=1e-6)
    gray = processor.encode_batch([([image[..., 0]], "q")])
    assert gray["image_grid_thw"].tolist() == batches[0]["image_grid_thw"].tolist()


def test_text_only_example_and_system_prompt(processor):
    batch = processor.encode_batch([([], "2+2?")], system_prompt="Think first.")
    assert batch["pixel_values"].shape == (0, inputs.PATCH_DIM)
    assert batch["image_grid_thw"].shape == (0, 3)
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>system\nThink first.<|im_end|>")


def test_min_max_pixels_bound_the_grid(tokenizer_dir):
    small = inputs.load_image_processor(tokenizer_dir, min_pixels=16 * 784, max_pixels=64 * 784)
    big = small(images=[PIL.Image.new("RGB", (1000, 800))], return_tensors="np")
    tiny = small(images=[PIL.Image.new("RGB", (10, 12))], return_tensors="np")
    assert big["image_grid_thw"][0].prod() // 4 <= 64
    assert tiny["image_grid_thw"][0].prod() // 4 >= 16


def test_padding_to_length_and_prompt_limit(processor, monkeypatch):
    example = ([random_image(*SIZES[0], seed=8)], "q")
    natural = processor.encode_batch([example])["input_ids"].shape[1]
    bucket = buckets.bucket(natural, (64, 128, 256), "prompt length")
    assert bucket >= natural
    padded = processor.encode_batch([example], pad_to_length=bucket)
    assert padded["input_ids"].shape == (1, bucket)
    assert padded["attention_mask"].sum() == natural
    with pytest.raises(ValueError, match="more than the padded length"):
        processor.encode_batch([example], pad_to_length=natural - 1)
    with pytest.raises(ValueError, match="exceeds the largest bucket 8"):
        buckets.bucket(9, (4, 8), "patches")
    monkeypatch.setattr(processor, "max_prompt_length", natural - 1)
    with pytest.raises(ValueError, match="max_prompt_length"):
        processor.encode_batch([example])


def test_missing_and_corrupt_image_files_name_the_file(processor, tmp_path):
    good = random_image(40, 40, seed=9)
    missing = tmp_path / "nope.jpg"
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg" * 10)
    truncated = tmp_path / "truncated.png"
    PIL.Image.fromarray(random_image(64, 64, seed=10)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for bad in (missing, garbage, truncated, empty, tmp_path):
        with pytest.raises(inputs.BadImageError) as e:
            processor.encode_batch([([good], "fine"), ([good, str(bad)], "broken")])
        assert str(bad) in str(e.value)
        assert e.value.path == str(bad)
    with pytest.raises(ValueError, match="example 0 image 0"):
        processor.encode_batch([([np.zeros((4, 4, 2), np.uint8)], "two channels")])


def test_completions_get_a_loss_mask(processor):
    examples = [([random_image(*SIZES[0], seed=11)], "a"), ([], "b, longer question")]
    batch = processor.encode_batch(examples)
    answers = ["<think>round</think> <answer>circle</answer>", "4"]
    sft = processor.append_completions(batch, answers)
    P = batch["input_ids"].shape[1]
    assert sft["input_ids"].shape == sft["loss_mask"].shape == sft["attention_mask"].shape
    assert (sft["loss_mask"][:, :P] == 0).all()
    np.testing.assert_array_equal(sft["input_ids"][:, :P], batch["input_ids"])
    for i, answer in enumerate(answers):
        kept = sft["input_ids"][i][sft["loss_mask"][i].astype(bool)]
        assert kept[-1] == processor.special.im_end
        assert processor.tokenizer.decode(kept[:-1]) == answer
        # right padding after the completion is masked out of attention and loss
        n = int(sft["loss_mask"][i].sum())
        assert (sft["attention_mask"][i, P + n :] == 0).all()
    assert processor.decode(sft["input_ids"], sft["loss_mask"]) == answers


def test_decode_stops_at_eos_and_skips_special_tokens(processor):
    hello = processor.tokenizer("hello <answer>x</answer>", add_special_tokens=False)["input_ids"]
    junk = processor.tokenizer(" junk", add_special_tokens=False)["input_ids"]
    s = processor.special
    row1 = [s.vision_start] + hello + [s.im_end] + junk
    row2 = hello + [s.pad] * (len(row1) - len(hello))
    assert processor.decode(np.array([row1, row2])) == ["hello <answer>x</answer>"] * 2
    mask = np.ones((1, len(row1)), np.int32)
    assert processor.decode(np.array([row1]), mask) == ["hello <answer>x</answer> junk"]


NO_TORCH_SCRIPT = (
    blocking_prelude("torch", "torchvision")
    + """
import numpy as np
from vrft_jax.inputs import PromptProcessor
p = PromptProcessor(sys.argv[1], min_pixels=3136, max_pixels=401408)
b = p.encode_batch([([np.zeros((60, 90, 3), np.uint8)], "hi")])
assert b["pixel_values"].shape == (24, 1176) and "torch" not in sys.modules
print("ok without torch")
"""
)


def test_works_without_torch(tokenizer_dir):
    """Hosts that only prepare data (no torch, no torchvision) can build inputs."""
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, tokenizer_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "ok without torch" in proc.stdout, proc.stderr[-2000:]
