"""Small helpers around the ml_collections config: path checks, tokenizer folder, config.json.

The entry point (`vrft_jax.main`) calls `check_paths` before any work so that a mistyped path fails
in the first second, naming the config field and the path, instead of deep inside a data loader.
"""

import importlib.util
import json
import os
import pathlib
import sys

import ml_collections
from absl import logging

# The Qwen2-VL tokenizer and image-processor files shipped with the package (test and demo asset).
SHIPPED_TOKENIZER_DIR = str(
    pathlib.Path(__file__).resolve().parent / "assets" / "qwen2_vl_tokenizer"
)

# Config fields that name local paths: field -> what it must be ("dir", "file" or "any").
PATH_FIELDS = {
    "model_init": "dir",
    "tokenizer": "dir",
    "resume": "dir",
    "data.path": "any",
    "data.image_root": "dir",
    "data.tfds_data_dir": "dir",
}


def get_field(config, dotted: str):
    """`config.a.b` for the dotted name "a.b"."""
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def check_paths(config) -> None:
    """Fails with FileNotFoundError naming the field and the path if a set path does not exist.

    Empty fields mean "not used" and are skipped, as are remote URLs ("gs://...", "s3://...") which
    the code that opens them checks.
    """
    for field, kind in PATH_FIELDS.items():
        try:
            path = get_field(config, field)
        except (KeyError, AttributeError):
            continue  # a config without this section (e.g. a test config) does not use it
        if not path or "://" in str(path):
            continue
        path = os.path.expanduser(str(path))
        if kind == "dir" and not os.path.isdir(path):
            what = "is not a folder" if os.path.exists(path) else "does not exist"
            raise FileNotFoundError(f"config.{field}: {path} {what}")
        if kind == "any" and not os.path.exists(path):
            raise FileNotFoundError(f"config.{field}: {path} does not exist")


def resolve_tokenizer_dir(config) -> str:
    """The folder to load the tokenizer and image processor from.

    `config.tokenizer` if set; else `config.model_init` if it holds tokenizer files (a Hugging Face
    checkpoint folder does); else the Qwen2-VL files shipped with the package.
    """
    if config.tokenizer:
        return os.path.expanduser(config.tokenizer)
    if config.model_init:
        folder = os.path.expanduser(config.model_init)
        if any(os.path.exists(os.path.join(folder, f)) for f in _TOKENIZER_FILES):
            return folder
        logging.warning(
            "config.model_init %s has no tokenizer files; using the shipped Qwen2-VL tokenizer "
            "(set --config.tokenizer to choose another)",
            folder,
        )
    return SHIPPED_TOKENIZER_DIR


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def write_config_json(config, workdir: str) -> str:
    """Writes the resolved config to `workdir/config.json` and returns the file path. The same
    config already there is left untouched (re-running a finished run changes no file)."""
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2) + "\n"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return path
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def read_config_json(path: str) -> ml_collections.ConfigDict:
    """Reads a config.json written by `write_config_json` (tuples come back as lists)."""
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def add_config_root_to_path(config_file: str) -> None:
    """Lets config files import their siblings as `from configs import base`.

    The folder that holds `configs/` goes on sys.path, so the import works from any working
    directory, not only the repository root.
    """
    folder = pathlib.Path(config_file).resolve().parent
    if folder.name == "configs" and str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, as `--config path[:arg]` would load it (for tests)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    add_config_root_to_path(path)
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()
