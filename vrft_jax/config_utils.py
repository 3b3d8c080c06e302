"""Small helpers around the ml_collections config: path checks, tokenizer folder, config.json.

The entry point (`vrft_jax.main`) calls `check_paths` before any work so that a mistyped path fails
in the first second, naming the config field and the path, instead of deep inside a data loader.
"""

import importlib.util
import json
import math
import os
import pathlib
import sys

import ml_collections
from absl import logging

from vrft_jax.jsonio import read_json

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


def model_type(config) -> str:
    """The model family the run trains: config.json's model_type of `config.model_init` when it
    has one, else the preset's."""
    folder = os.path.expanduser(config.model_init or "")
    if folder and os.path.isfile(os.path.join(folder, "config.json")):
        from vrft_jax import hf

        return hf.read_config(folder).model_type
    from vrft_jax.models import get_preset

    return get_preset(config.model.preset).model_type


def check_json_files(folder: str) -> None:
    """Parses every *.json file directly in `folder` (a tokenizer or model folder); ValueError
    naming the file, line and column of the first one that is not valid JSON."""
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.endswith(".json") or not os.path.isfile(path):
            continue
        read_json(path)


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


# ---- Enumerated values --------------------------------------------------------------------------


def _enumerated_fields() -> dict:
    """Config field -> the values the code accepts, read from the modules that use them."""
    from vrft_jax import box_frames, grpo, optim, prompts, train
    from vrft_jax.data import factory, synthetic
    from vrft_jax.models import PRESETS
    from vrft_jax.rewards import kernels, scores

    subjects = tuple(prompts.CLASSIFICATION_SUBJECTS)
    return {
        "trainer": train.TRAINERS,
        "model.preset": tuple(PRESETS),
        "model.box_frame": box_frames.CONFIG_CHOICES,
        "input.prompt_template": tuple(prompts.TEMPLATES),
        "input.classification_subject": subjects,
        "data.source": factory.SOURCES,
        "data.synthetic_task": synthetic.TASKS,
        "data.image_folder_subject": subjects,
        "optim.schedule": optim.SCHEDULES,
        "grpo.advantage": grpo.ADVANTAGES,
        "grpo.kl_estimator": grpo.KL_ESTIMATORS,
        "grpo.loss_aggregation": grpo.AGGREGATIONS,
        "reward.iou_denominator": kernels.DENOMINATORS,
        "reward.grounding": kernels.GROUNDING_MODES,
        "reward.classification_match": scores.CLASSIFICATION_MATCHES,
    }


def check_values(config) -> list[str]:
    """Every enumerated or structured value the config names, checked against what exists.

    Returns one line per problem ("config.field=value: expected ..."), empty when all is well, so
    `--check_only` reports all of them at once, before any data or model is touched.
    """
    errors = []
    for field, allowed in _enumerated_fields().items():
        value = get_field(config, field)
        if value not in allowed:
            errors.append(f"config.{field}={value!r}: expected one of {', '.join(allowed)}")
    for check in (
        _check_model,
        _check_rewards,
        _check_mesh,
        _check_data,
        _check_relabel,
        _check_numbers,
    ):
        errors.extend(check(config))
    return errors


def _check_model(config) -> list[str]:
    import jax.numpy as jnp

    from vrft_jax.models import PRESETS, get_preset

    errors = []
    for field in ("model.master_dtype", "model.compute_dtype", "optim.mu_dtype"):
        value = get_field(config, field)
        if field == "optim.mu_dtype" and value == "":  # "" = the master dtype
            continue
        try:
            ok = jnp.issubdtype(jnp.dtype(value), jnp.floating)
        except TypeError:
            ok = False
        if not ok:
            errors.append(f"config.{field}={value!r}: expected a float dtype (float32, bfloat16)")
    m = config.model
    if m.preset in PRESETS:  # attention / remat are checked by the model config itself
        try:
            get_preset(m.preset, attention=m.attention, remat=m.remat, vision_remat=m.vision_remat)
        except ValueError as e:
            errors.append(f"config.model: {e}")
    from vrft_jax import lora

    try:  # also checked where the model is built (model_setup.build_model)
        lora.check_config(config.lora)
        lora.check_full_warmup(config)
    except ValueError as e:
        errors.append(str(e))
    return errors


def _check_rewards(config) -> list[str]:
    from vrft_jax.rewards import registry

    specs = config.rewards
    example = "e.g. (('format', 1.0), ('detection_iou', 1.0))"
    if isinstance(specs, str) or not isinstance(specs, list | tuple):
        return [f"config.rewards={specs!r}: expected (name, weight) pairs, {example}"]
    for spec in specs:
        if isinstance(spec, str) or not isinstance(spec, list | tuple) or len(spec) != 2:
            return [f"config.rewards: {spec!r} is not a (name, weight) pair, {example}"]
    try:
        registry.validate_specs(specs)
    except ValueError as e:
        return [str(e).replace("config `rewards`", "config.rewards")]
    return []


def _check_mesh(config) -> list[str]:
    from vrft_jax import sharding

    known = set(sharding.BATCH_AXES) | {axis for _, axis in sharding.DEFAULT_RULES}
    mesh = config.mesh
    if not isinstance(mesh, list | tuple) or not all(
        isinstance(a, list | tuple) and len(a) == 2 and isinstance(a[1], int) for a in mesh
    ):
        return [f"config.mesh={mesh!r}: expected (axis name, size) pairs"]
    errors = [
        f"config.mesh: unknown axis {name!r}; expected names from {sorted(known)}"
        for name, _ in mesh
        if name not in known
    ]
    fixed = math.prod(size for _, size in mesh if size > 0) or 1
    try:  # names unique, sizes positive or one -1 (the device count is checked at start-up)
        sharding.mesh_shape(mesh, fixed)
    except ValueError as e:
        errors.append(str(e))
    names = {name for name, _ in mesh}
    for rule in config.mesh_rules:
        if not isinstance(rule, list | tuple) or len(rule) != 2:
            errors.append(f"config.mesh_rules: {rule!r} is not a (logical axis, mesh axis) pair")
            continue
        targets = rule[1] if isinstance(rule[1], list | tuple) else [rule[1]]
        errors.extend(
            f"config.mesh_rules: {rule!r} names mesh axis {t!r}, not one of {sorted(names)}"
            for t in targets
            if t is not None and t not in names
        )
    return errors


def _check_data(config) -> list[str]:
    from vrft_jax.data import coco, tfds

    errors = []
    gate = config.eval.detection_gate
    if gate not in coco.GATES and not os.path.isfile(os.path.expanduser(gate)):
        errors.append(
            f"config.eval.detection_gate={gate!r}: expected one of {', '.join(coco.GATES)} or an "
            "exist-map JSON file"
        )
    if config.data.source == "tfds" and config.data.tfds_name not in tfds.SUBJECTS:
        errors.append(
            f"config.data.tfds_name={config.data.tfds_name!r}: expected one of "
            f"{', '.join(tfds.SUBJECTS)}"
        )
    return errors


def parse_relabel(spec: str) -> dict[str, tuple[str, float]]:
    """config.sft.relabel "TRUE>GIVEN@FRACTION[,...]" -> {TRUE: (GIVEN, FRACTION)}."""
    rules = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            pair, fraction = part.split("@")
            true, given = (x.strip() for x in pair.split(">"))
            fraction = float(fraction)
        except ValueError:
            true = given = ""
        if not true or not given or not 0.0 <= fraction <= 1.0 or true in rules:
            raise ValueError(
                f"config.sft.relabel={spec!r}: {part!r} is not TRUE>GIVEN@FRACTION with a "
                "fraction in [0, 1] and each TRUE class once, e.g. 'blue>green@0.7'"
            )
        rules[true] = (given, fraction)
    return rules


def _check_relabel(config) -> list[str]:
    try:
        parse_relabel(config.sft.relabel)
    except ValueError as e:
        return [str(e)]
    return []


def _check_numbers(config) -> list[str]:
    checks = {
        "data.max_bad_fraction": lambda v: 0 <= v <= 1,
        "grpo.G": lambda v: v >= 1,
        "grpo.mu": lambda v: v >= 1,
        "sampler.temperature": lambda v: v >= 0,
        "sampler.top_k": lambda v: v >= 0,
        "sampler.top_p": lambda v: 0 < v <= 1,
        "input.batch_size": lambda v: v >= 1,
        "total_steps": lambda v: v >= 0,
    }
    return [
        f"config.{field}={get_field(config, field)!r} is out of range"
        for field, ok in checks.items()
        if not ok(get_field(config, field))
    ]
