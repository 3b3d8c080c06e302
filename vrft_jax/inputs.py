"""Prompt side: (images, question) -> Qwen2-VL model inputs, as numpy arrays on the host.

The library does the per-image work: the Hugging Face tokenizer and chat template render and
tokenize the text, and the PIL Qwen2-VL image processor resizes (`min_pixels` / `max_pixels`),
normalises and patchifies each image (no torch or torchvision needed). This module adds what the
library lacks for us: batching examples that hold different numbers of images of different sizes,
expanding each `<|image_pad|>` to its image's token count, left padding, and completions with a loss
mask (SFT).

Batch layout returned by `PromptProcessor.encode_batch` (B examples, I images in all, S patches):
  input_ids       int32   [B, T]    left padded with the pad id (<|endoftext|>, 151643)
  attention_mask  int32   [B, T]    1 on real tokens, 0 on padding
  pixel_values    float32 [S, 1176] all images' patches, example by example, image by image
  image_grid_thw  int32   [I, 3]    (t, h, w) patch grid per image, same order
Image i takes t*h*w patch rows of `pixel_values` and t*h*w / merge_size**2 `<|image_pad|>` tokens.

The processor also knows the model's box frame (`box_frame`, vrft_jax.box_frames): questions are
rendered asking for boxes in that frame (prompts.in_frame), and `image_sizes` / `resized_size`
give the (W, H) each image has as the model sees it, which pixel-frame answers are relative to.
"""

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import PIL.Image
import transformers

from vrft_jax import box_frames, prompts

# Image loading and the image processor live in vrft_jax.images; re-exported for callers here.
from vrft_jax.images import IMAGE_PROCESSOR_SETTINGS as IMAGE_PROCESSOR_SETTINGS
from vrft_jax.images import SHIPPED_DIR as SHIPPED_DIR
from vrft_jax.images import BadImageError as BadImageError
from vrft_jax.images import _smart_resize, load_image, load_image_processor
from vrft_jax.images import processor_file as processor_file

PATCH_DIM = 1176  # 3 channels * temporal patch 2 * 14 * 14 (Qwen2-VL; Qwen3-VL: 16 px, 1536)


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Special token ids, read from the tokenizer (Qwen2-VL values in comments)."""

    pad: int  # <|endoftext|> 151643, the tokenizer's pad token
    eos: tuple[
        int, ...
    ]  # generation stops at any of these: <|im_end|> 151645, <|endoftext|> 151643
    im_start: int  # 151644
    im_end: int  # 151645
    endoftext: int  # 151643
    image_pad: int  # 151655, repeated once per merged image token
    vision_start: int  # 151652
    vision_end: int  # 151653

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialTokens":
        def token_id(token):
            ids = tokenizer.convert_tokens_to_ids([token])
            if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
                raise ValueError(f"tokenizer has no special token {token}")
            return int(ids[0])

        im_end, endoftext = token_id("<|im_end|>"), token_id("<|endoftext|>")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else endoftext
        return cls(
            pad=int(pad),
            eos=(im_end, endoftext),
            im_start=token_id("<|im_start|>"),
            im_end=im_end,
            endoftext=endoftext,
            image_pad=token_id("<|image_pad|>"),
            vision_start=token_id("<|vision_start|>"),
            vision_end=token_id("<|vision_end|>"),
        )


class PromptProcessor:
    """Tokenizer + chat template + image processor for Qwen2-VL prompts (host side, numpy)."""

    def __init__(
        self,
        tokenizer_dir: str,
        *,
        min_pixels: int,
        max_pixels: int,
        max_prompt_length: int | None = None,
        box_frame: str = box_frames.RELATIVE,
        model_type: str = "qwen2_vl",
    ):
        if not os.path.isdir(tokenizer_dir):
            raise FileNotFoundError(f"tokenizer folder {tokenizer_dir} does not exist")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"tokenizer in {tokenizer_dir} has no chat template")
        self.image_processor = load_image_processor(
            tokenizer_dir, min_pixels=min_pixels, max_pixels=max_pixels, model_type=model_type
        )
        self.merge_size = int(self.image_processor.merge_size)
        self.patch_size = int(self.image_processor.patch_size)
        self.box_frame = box_frames.check_frame(box_frame, "box_frame")  # the model's
        p = self.image_processor
        self.patch_dim = 3 * int(p.temporal_patch_size) * int(p.patch_size) ** 2  # 1176 / 1536
        self.special = SpecialTokens.from_tokenizer(self.tokenizer)
        self.max_prompt_length = max_prompt_length

    @classmethod
    def from_config(cls, config, model_config=None) -> "PromptProcessor":
        """From `config.tokenizer` / `config.model_init` and `config.input`; the family from
        `model_config` (None: model_init's config.json, else the preset), and the box frame from
        `config.model.box_frame` ("auto": the family's)."""
        from vrft_jax.config_utils import model_type, resolve_tokenizer_dir

        family = model_type(config) if model_config is None else box_frames.model_type(model_config)

        return cls(
            resolve_tokenizer_dir(config),
            min_pixels=config.input.min_pixels,
            max_pixels=config.input.max_pixels,
            max_prompt_length=config.input.max_prompt_length,
            box_frame=box_frames.resolve(config.model.box_frame, family),
            model_type=family,
        )

    # ---- Image sizes as the model sees them ----------------------------------------------------

    def image_sizes(self, image_grid_thw) -> np.ndarray:
        """(W, H) int [I, 2] of each image as resized, from its patch grid image_grid_thw [I, 3]."""
        return box_frames.grid_sizes(np.asarray(image_grid_thw), self.patch_size)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) an image of width x height pixels is resized to: the image processor's own rule
        (sides multiples of patch_size * merge_size, area within min/max pixels), so equal to
        `image_sizes` of its grid without processing the pixels."""
        ip = self.image_processor
        size = getattr(ip, "size", {}) or {}
        h, w = _smart_resize(
            height, width, factor=self.patch_size * self.merge_size,
            min_pixels=size.get("shortest_edge", getattr(ip, "min_pixels", None)),
            max_pixels=size.get("longest_edge", getattr(ip, "max_pixels", None)),
        )  # fmt: skip
        return int(w), int(h)

    # ---- Text ------------------------------------------------------------------------------------

    def chat_text(
        self,
        question: str,
        num_images: int,
        *,
        system_prompt: str | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The chat-template text of one user turn: images first, then the question (as the
        reference builds it), asking for boxes in the model's frame (prompts.in_frame). Without
        `system_prompt` the template adds its default system turn."""
        messages = []
        if system_prompt is not None:
            messages.append({"role": "system", "content": system_prompt})
        content = [{"type": "image"} for _ in range(num_images)]
        content.append({"type": "text", "text": prompts.in_frame(question, self.box_frame)})
        messages.append({"role": "user", "content": content})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def decode(self, token_ids, mask=None) -> list[str]:
        """Texts of completions [N, C], special tokens skipped (as the reference decodes).

        With `mask` [N, C], only tokens where it is nonzero are kept. Without it, each row stops at
        its first end-of-sequence token (what Hugging Face generate's padding amounts to).
        """
        token_ids = np.asarray(token_ids)
        if token_ids.ndim == 1:
            token_ids = token_ids[None]
            mask = None if mask is None else np.asarray(mask)[None]
        rows = []
        for i, row in enumerate(token_ids):
            if mask is not None:
                row = row[np.asarray(mask[i]).astype(bool)]
            else:
                stops = np.flatnonzero(np.isin(row, self.special.eos))
                row = row[: stops[0]] if stops.size else row
            rows.append(row.tolist())
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    # ---- Batches ---------------------------------------------------------------------------------

    def encode_batch(
        self,
        examples: Sequence[tuple[Sequence, str]],
        *,
        add_generation_prompt: bool = True,
        system_prompt: str | None = None,
        pad_to_length: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Model inputs for B examples, each (list of images, question); layout in the module doc.

        Images may be PIL images, numpy arrays or file paths, any number per example (0 allowed),
        each of its own size. `pad_to_length` left pads T to a fixed size (e.g. a bucket).
        Prompts longer than `max_prompt_length` fail loudly; they are never truncated.
        """
        if not examples:
            raise ValueError("encode_batch needs at least one example")
        all_ids, all_patches, all_grids = [], [], []
        for index, (images, question) in enumerate(examples):
            if isinstance(images, (str, os.PathLike, np.ndarray, PIL.Image.Image)):
                images = [images]  # one image given bare
            pixels, grids = self._encode_images(images, index)
            text = self.chat_text(
                question,
                len(grids),
                system_prompt=system_prompt,
                add_generation_prompt=add_generation_prompt,
            )
            ids = self._expand_image_tokens(self._tokenize(text), grids, index)
            if self.max_prompt_length is not None and len(ids) > self.max_prompt_length:
                raise ValueError(
                    f"example {index}: prompt has {len(ids)} tokens, more than max_prompt_length "
                    f"{self.max_prompt_length} (lower input.max_pixels or raise "
                    "input.max_prompt_length)"
                )
            all_ids.append(ids)
            all_patches.extend(pixels)
            all_grids.extend(grids)
        input_ids, attention_mask = left_pad(all_ids, self.special.pad, pad_to_length)
        pixel_values = (
            np.concatenate(all_patches, axis=0).astype(np.float32)
            if all_patches
            else np.zeros((0, self.patch_dim), np.float32)
        )
        image_grid_thw = np.asarray(all_grids, np.int32).reshape(-1, 3)
        return dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
        )

    def append_completions(
        self, batch: dict[str, np.ndarray], completions: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Prompt batch + answer text + <|im_end|> per example, for supervised training.

        Returns a copy of `batch` whose input_ids / attention_mask are [B, P + C] (the prompt part
        left padded as before, the completion part right padded with the pad id), plus
        `loss_mask` int32 [B, P + C]: 1 on the answer tokens and the closing <|im_end|>.
        """
        prompt_ids = np.asarray(batch["input_ids"])
        if len(completions) != prompt_ids.shape[0]:
            raise ValueError(f"{len(completions)} completions for {prompt_ids.shape[0]} prompts")
        answers = [self._tokenize(c) + [self.special.im_end] for c in completions]
        width = max(len(a) for a in answers)
        completion_ids = np.full((len(answers), width), self.special.pad, np.int32)
        completion_mask = np.zeros((len(answers), width), np.int32)
        for i, a in enumerate(answers):
            completion_ids[i, : len(a)] = a
            completion_mask[i, : len(a)] = 1
        out = dict(batch)
        out["input_ids"] = np.concatenate([prompt_ids, completion_ids], axis=1)
        out["attention_mask"] = np.concatenate([batch["attention_mask"], completion_mask], axis=1)
        out["loss_mask"] = np.concatenate([np.zeros_like(prompt_ids), completion_mask], axis=1)
        return out

    # ---- Helpers ---------------------------------------------------------------------------------

    def _tokenize(self, text):
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode_images(self, images, index):
        """Patches [S_i, 1176] and grid (t, h, w) of each image of one example."""
        pixels, grids = [], []
        for j, image in enumerate(images):
            name = f"example {index} image {j}"
            pil = load_image(image, name)
            try:
                out = self.image_processor(images=[pil], return_tensors="np")
            except ValueError as e:  # e.g. an aspect ratio over 200
                where = (
                    image
                    if isinstance(image, (str, os.PathLike))
                    else f"{pil.size[0]}x{pil.size[1]}"
                )
                raise ValueError(f"{name} ({where}): {e}") from e
            pixels.append(np.asarray(out["pixel_values"]))
            grids.append([int(v) for v in np.asarray(out["image_grid_thw"])[0]])
        return pixels, grids

    def _expand_image_tokens(self, ids, grids, index):
        """Repeats the k-th <|image_pad|> t*h*w / merge**2 times for image k (ids, not text)."""
        positions = [i for i, t in enumerate(ids) if t == self.special.image_pad]
        if len(positions) != len(grids):
            raise ValueError(
                f"example {index}: {len(grids)} images but {len(positions)} <|image_pad|> tokens "
                "in the prompt (does the question text contain image tokens?)"
            )
        out, start = [], 0
        for pos, (t, h, w) in zip(positions, grids):
            out.extend(ids[start:pos])
            out.extend([self.special.image_pad] * (t * h * w // self.merge_size**2))
            start = pos + 1
        out.extend(ids[start:])
        return out


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, length: int | None = None):
    """Left-padded ids and mask, both int32 [B, T]; T = longest row or `length`."""
    longest = max(len(r) for r in rows)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a prompt has {longest} tokens, more than the padded length {length}")
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        if r:
            ids[i, length - len(r) :] = r
            mask[i, length - len(r) :] = 1
    return ids, mask
