r"""Demo: the small job `python -m vrft_jax.main` runs out of the box, on a laptop CPU.

Command:
  python -m vrft_jax.main --config configs/demo.py --workdir /tmp/vrft_demo

Expected result (until the GRPO trainer lands): within about 30 seconds, the Qwen2-VL tokenizer
and image processor shipped with the package build one batch of 4 detection prompts from synthetic
images (1 to 3 images of different sizes per prompt) and print the prompt token counts, the image
grids and the array shapes (input_ids int32[4, T], pixel_values float32[S, 1176], image_grid_thw
int32[7, 3]); /tmp/vrft_demo then holds config.json and inputs_summary.json.

`--config configs/demo.py:classification` uses the classification template instead.
"""

from configs import base


def get_config(arg=None):
    c = base.get_config()
    c.input.batch_size = 4
    c.input.prompt_template = arg or "detection"
    c.data.synthetic_size = 112
    c.model.preset = "tiny"
    return c
