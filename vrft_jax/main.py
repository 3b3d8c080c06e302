r"""Entry point: `python -m vrft_jax.main --config configs/X.py[:arg] --workdir DIR [--config.x=v]`.

Steps: parse the config (locked: a misspelled `--config.field` fails naming the field), check its
paths and enumerated values (`config_utils.check_values`), read the model folder's config.json and
the tokenizer's JSON files, optionally `jax.distributed.initialize()`, create the workdir, write
`workdir/config.json`, validate the data (`vrft_jax.data.validate`: every row's solution and image
header, cached in the workdir), then run `vrft_jax.train.run(config, workdir)`. Any of these
mistakes is one line on stderr and exit code 2, before a model is built (`--verbosity=1` shows the
traceback).

Until `vrft_jax/train.py` exists, the run is a small real job instead (`describe_inputs`): it loads
the tokenizer and image processor, builds one batch of prompts from synthetic images and prints the
token counts and shapes. `--check_only` stops after the checks (config, model files, data).
"""

import contextlib
import difflib
import importlib
import json
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vrft_jax import config_utils
from vrft_jax.data import validate
from vrft_jax.data.example import DataError

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, optionally with an argument: configs/x.py[:arg].",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for config.json, logs and checkpoints.")
_CHECK_ONLY = flags.DEFINE_bool(
    "check_only", False, "Parse and check the config, write workdir/config.json, then stop."
)
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl's flag parsing, with a one-line error (exit 2) for a bad `--config...` flag.

    config_flags raises a bare AttributeError/KeyError for an unknown field; we name the field and
    suggest the closest existing one.
    """
    config_utils.add_config_root_to_path(_config_spec(argv).split(":", 1)[0])
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _die(f"{e}\nPass --helpfull to see the flags.")
    except (AttributeError, KeyError) as e:
        _die(describe_bad_override(argv) or f"bad config override: {e}")
    except (ImportError, SyntaxError) as e:
        _die(f"cannot load the config file: {type(e).__name__}: {e}")


def describe_bad_override(argv) -> str | None:
    """Which `--config.a.b=...` in argv names a field the config file does not have, and why."""
    path, _, arg = _config_spec(argv).partition(":")  # as config_flags splits "file.py:arg"
    try:
        config = config_utils.load_config_file(path, arg or None)
    except Exception:  # the caller reports the original error instead
        return None
    for a in argv:
        if not a.startswith("--config."):
            continue
        dotted = a[len("--config.") :].split("=", 1)[0]
        node, parts = config, dotted.split(".")
        for depth, part in enumerate(parts):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                prefix = ".".join(parts[:depth])
                close = difflib.get_close_matches(part, keys, n=1)
                hint = ""
                if close:
                    hint = f" (did you mean {'.'.join(filter(None, [prefix, close[0]]))!r}?)"
                return f"unknown config field {dotted!r} in {a}{hint}"
            node = node[part]
    return None


def _config_spec(argv) -> str:
    """The value of --config in argv ("" if absent)."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def load_flag_config():
    """The parsed config, or exit(2) with a one-line message naming the bad file or value."""
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]
    if not os.path.isfile(path):
        _die(f"config file {path} does not exist")
    try:
        config = _CONFIG.value
        config.keys()  # a config that failed to load is a placeholder that raises on any access
        return config
    except (OSError, ImportError, SyntaxError, AttributeError) as e:
        _die(f"cannot load config file {path}: {e}")
    except (TypeError, ValueError) as e:
        _die(f"bad config override: {e}")


def check_model_files(config) -> None:
    """Reads config.model_init's config.json and the tokenizer folder's JSON files now, so a broken
    file is named in the first seconds (ValueError naming the file, line and field), and checks
    that the tokenizer folder's image processor cuts the patches the model embeds."""
    from vrft_jax import hf
    from vrft_jax.models import get_preset

    if config.model_init:
        model_config = hf.read_config(os.path.expanduser(config.model_init))
    else:
        model_config = get_preset(config.model.preset)
    tokenizer_dir = config_utils.resolve_tokenizer_dir(config)
    config_utils.check_json_files(tokenizer_dir)
    from vrft_jax.inputs import processor_file

    # Without a model folder a Qwen3-VL run takes its family's processor settings, not the
    # shipped Qwen2-VL files (inputs.load_image_processor): only a file that is read is checked.
    if processor_file(tokenizer_dir, model_config.model_type):
        hf.check_processor_config(tokenizer_dir, model_config)


@contextlib.contextmanager
def _user_errors(kinds=(DataError, ValueError, FileNotFoundError)):
    """A data or model-file mistake (an exception of `kinds`) exits 2 with its one-line message;
    `--verbosity=1` re-raises it for the traceback."""
    try:
        yield
    except kinds as e:
        if logging.get_verbosity() > 0:
            raise
        _die(str(e))


def _die(message):
    print(f"vrft_jax.main: error: {message}", file=sys.stderr)
    sys.exit(2)


class _OwnInfoOnly:
    """absl handler filter: INFO lines from vrft_jax only; libraries (orbax logs every save at
    INFO) still reach the console from WARNING up. `--verbosity=1` shows everything."""

    def filter(self, record):
        own = f"{os.sep}vrft_jax{os.sep}" in record.pathname
        return own or record.levelno >= std_logging.WARNING or logging.get_verbosity() > 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    config = load_flag_config()
    workdir = os.path.expanduser(_WORKDIR.value)

    try:
        config_utils.check_paths(config)
    except FileNotFoundError as e:
        _die(str(e))
    errors = config_utils.check_values(config)
    if errors:
        _die(
            "\n".join(errors)
            if len(errors) == 1
            else f"{len(errors)} bad config values:\n  " + "\n  ".join(errors)
        )
    with _user_errors():
        check_model_files(config)

    if config.distributed:
        import jax

        jax.distributed.initialize()  # before any other jax call (multi-host launches)
        is_main_process = jax.process_index() == 0
    else:
        is_main_process = True

    os.makedirs(workdir, exist_ok=True)
    if is_main_process:
        path = config_utils.write_config_json(config, workdir)
        logging.info("wrote %s", path)
    with _user_errors():  # before any model is built, so bad data costs seconds, not a model load
        report = validate.validate_data(config, workdir, write_cache=is_main_process)
    if report["rows"]:
        how = "cached" if report["cached"] else "checked"
        print(f"data OK: {report['rows']} rows {how}, {len(report['bad'])} dropped")
    if _CHECK_ONLY.value:
        print(f"config OK; wrote {os.path.join(workdir, 'config.json')}")
        return

    try:
        train = importlib.import_module("vrft_jax.train")
    except ModuleNotFoundError as e:
        if e.name != "vrft_jax.train":
            raise  # train.py exists but one of its imports is missing: show that error
        train = None
    if train is not None:
        with _user_errors(DataError):  # e.g. more bad images than allowed found while decoding
            train.run(config, workdir)
    else:
        describe_inputs(config, workdir)


# ---- Stand-in job until vrft_jax.train exists --------------------------------------------------

# Example field values for the stand-in prompts, one per template field.
_EXAMPLE_FIELDS = {
    "category": "circle",
    "instruction": "the brightest square",
    "problem": "What shapes are in this image?",
}


def describe_inputs(config, workdir: str) -> dict:
    """Builds one batch of prompts from synthetic images and reports what it made.

    Loads the tokenizer and image processor the config names, makes up to 4 examples with 1 to 3
    random images of different sizes each, encodes them with the configured prompt template, prints
    token counts and array shapes, and writes them to `workdir/inputs_summary.json`.
    """
    import numpy as np

    from vrft_jax import prompts
    from vrft_jax.inputs import PromptProcessor

    tokenizer_dir = config_utils.resolve_tokenizer_dir(config)
    processor = PromptProcessor.from_config(config)
    template = config.input.prompt_template
    fields = {
        name: config.input.classification_subject if name == "subject" else _EXAMPLE_FIELDS[name]
        for name in prompts.template_fields(template)
    }
    question = prompts.build_prompt(template, **fields)

    rng = np.random.default_rng(config.seed)
    side = config.data.synthetic_size
    examples = []
    for b in range(min(config.input.batch_size, 4)):
        images = [
            rng.integers(0, 256, (side + 28 * (b + j), side + 14 * (2 * b - j), 3), dtype=np.uint8)
            for j in range(1 + b % 3)
        ]
        examples.append((images, question))
    batch = processor.encode_batch(examples)

    image_tokens = batch["image_grid_thw"].prod(axis=1) // processor.merge_size**2
    summary = {
        "tokenizer_dir": tokenizer_dir,
        "prompt_template": template,
        "special_tokens": {k: v for k, v in vars(processor.special).items()},
        "images_per_example": [len(images) for images, _ in examples],
        "image_sizes_hw": [[list(im.shape[:2]) for im in images] for images, _ in examples],
        "image_grid_thw": batch["image_grid_thw"].tolist(),
        "image_tokens_per_image": image_tokens.tolist(),
        "prompt_tokens_per_example": batch["attention_mask"].sum(axis=1).tolist(),
        "shapes": {k: list(v.shape) for k, v in batch.items()},
        "dtypes": {k: str(v.dtype) for k, v in batch.items()},
    }
    path = os.path.join(workdir, "inputs_summary.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)

    first = processor.chat_text(question, len(examples[0][0]))
    print("vrft_jax.train is not available yet, so this run only builds model inputs.")
    print(f"tokenizer: {tokenizer_dir}")
    print(f"special token ids: {summary['special_tokens']}")
    print(f"first prompt ({template!r} template, before image-token expansion):\n{first}")
    for i, (images, _) in enumerate(examples):
        tokens = summary["prompt_tokens_per_example"][i]
        print(f"example {i}: {len(images)} image(s), {tokens} prompt tokens")
    print(
        f"image grids (t, h, w): {summary['image_grid_thw']} -> image tokens "
        f"{summary['image_tokens_per_image']}"
    )
    for k, v in batch.items():
        print(f"{k}: {v.dtype}{list(v.shape)}")
    print(f"wrote {path}")
    return summary


def run():
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
