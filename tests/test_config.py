"""Config system and entry point: overrides, typos, bad paths, config files, the stand-in job."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from vrft_jax import config_utils

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE = str(REPO / "configs" / "base.py")


def run_main(*args, cwd=REPO):
    """`python -m vrft_jax.main ARGS` in a subprocess; returns (exit code, stdout + stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "vrft_jax.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def flat_keys(config, prefix=""):
    keys = set()
    for k, v in config.items():
        keys.add(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys |= flat_keys(v, prefix + k + ".")
    return keys


def test_overrides_reach_config_json(tmp_path):
    workdir = tmp_path / "run"
    code, out = run_main(
        "--config",
        BASE,
        "--workdir",
        str(workdir),
        "--check_only",
        "--config.seed=7",
        "--config.optim.lr=3e-5",
        "--config.input.prompt_template=classification",
        "--config.grpo.dynamic_sampling=True",
        "--config.input.prompt_buckets=(32,64)",
    )
    assert code == 0, out
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["seed"] == 7
    assert saved["optim"]["lr"] == pytest.approx(3e-5)
    assert saved["input"]["prompt_template"] == "classification"
    assert saved["grpo"]["dynamic_sampling"] is True
    assert saved["input"]["prompt_buckets"] == [32, 64]
    # untouched fields keep the base defaults
    base = config_utils.load_config_file(BASE)
    assert saved["grpo"]["beta"] == base.grpo.beta
    assert flat_keys(config_utils.read_config_json(str(workdir / "config.json"))) == flat_keys(base)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.sede=3",
            "unknown config field 'sede' in --config.sede=3 (did you mean 'seed'?)",
        ),
        (
            "--config.input.promt_template=raw",
            "unknown config field 'input.promt_template'",
        ),
    ],
)
def test_misspelled_override_names_the_field(tmp_path, override, message):
    code, out = run_main("--config", BASE, "--workdir", str(tmp_path), override)
    assert code == 2, out
    assert message in out
    assert "Traceback" not in out
    assert not (tmp_path / "config.json").exists()


def test_bad_override_value_and_missing_config_file(tmp_path):
    code, out = run_main("--config", BASE, "--workdir", str(tmp_path), "--config.seed=abc")
    assert code != 0 and "--config.seed=abc" in out
    missing = str(tmp_path / "configs" / "nope.py")
    code, out = run_main("--config", missing + ":arg", "--workdir", str(tmp_path))
    assert code == 2 and f"config file {missing} does not exist" in out


def test_bad_path_fails_with_the_path(tmp_path):
    bad = str(tmp_path / "no_such_checkpoint")
    code, out = run_main(
        "--config", BASE, "--workdir", str(tmp_path / "w"), f"--config.model_init={bad}"
    )
    assert code == 2, out
    assert f"config.model_init: {bad} does not exist" in out


@pytest.mark.parametrize(
    "field", ["model_init", "tokenizer", "resume", "data.path", "data.image_root"]
)
def test_check_paths_names_field_and_path(tmp_path, field):
    config = config_utils.load_config_file(BASE)
    config_utils.check_paths(config)  # the defaults are all empty: nothing to check
    bad = str(tmp_path / "missing" / "thing")
    node = config
    *parents, last = field.split(".")
    for p in parents:
        node = node[p]
    node[last] = bad
    with pytest.raises(FileNotFoundError) as e:
        config_utils.check_paths(config)
    assert f"config.{field}" in str(e.value) and bad in str(e.value)
    node[last] = str(tmp_path)  # an existing folder passes
    config_utils.check_paths(config)


def test_config_file_argument_and_sibling_imports(tmp_path):
    """A config file elsewhere, loaded from another working directory, with `:arg`."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "shared_bits.py").write_text("TEMPLATE = 'grounding'\n")
    (configs / "mine.py").write_text(
        '"""python -m vrft_jax.main --config configs/mine.py:3 --workdir DIR"""\n'
        "from configs import base, shared_bits\n\n\n"
        "def get_config(arg=None):\n"
        "    c = base.get_config()\n"
        "    c.input.prompt_template = shared_bits.TEMPLATE\n"
        "    c.input.batch_size = int(arg or 1)\n"
        "    return c\n"
    )
    workdir = tmp_path / "w"
    code, out = run_main(
        "--config",
        str(configs / "mine.py") + ":3",
        "--workdir",
        str(workdir),
        "--check_only",
        cwd=tmp_path.parent,
    )
    assert code == 0, out
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["input"]["batch_size"] == 3
    assert saved["input"]["prompt_template"] == "grounding"


def test_every_config_file_is_runnable_as_documented():
    base = config_utils.load_config_file(BASE)
    for path in sorted((REPO / "configs").glob("*.py")):
        module = ast.parse(path.read_text())
        functions = {n.name for n in module.body if isinstance(n, ast.FunctionDef)}
        if path.name == "base.py" or "get_config" not in functions:
            continue  # base holds the defaults; helper modules (no get_config) are not configs
        config = config_utils.load_config_file(str(path))
        module_doc = ast.get_docstring(module) or ""
        assert f"--config configs/{path.name}" in module_doc, (
            f"{path.name}: no command in docstring"
        )
        # every field is a base field: defaults live in configs/base.py only
        assert flat_keys(config) == flat_keys(base), f"{path.name} adds or drops fields"


def test_tokenizer_folder_resolution(tmp_path):
    config = config_utils.load_config_file(BASE)
    assert config_utils.resolve_tokenizer_dir(config) == config_utils.SHIPPED_TOKENIZER_DIR
    config.model_init = str(tmp_path)  # a checkpoint folder without tokenizer files
    assert config_utils.resolve_tokenizer_dir(config) == config_utils.SHIPPED_TOKENIZER_DIR
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert config_utils.resolve_tokenizer_dir(config) == str(tmp_path)
    config.tokenizer = "/some/tokenizer"
    assert config_utils.resolve_tokenizer_dir(config) == "/some/tokenizer"


def test_stand_in_job_reports_consistent_inputs(tmp_path):
    from vrft_jax import main

    config = config_utils.load_config_file(BASE)
    config.input.batch_size = 3
    config.input.prompt_template = "grounding"
    summary = main.describe_inputs(config, str(tmp_path))
    assert json.loads((tmp_path / "inputs_summary.json").read_text()) == json.loads(
        json.dumps(summary)
    )
    assert summary["images_per_example"] == [1, 2, 3]
    grids = summary["image_grid_thw"]
    assert len(grids) == 6
    assert summary["image_tokens_per_image"] == [t * h * w // 4 for t, h, w in grids]
    assert summary["shapes"]["pixel_values"] == [sum(t * h * w for t, h, w in grids), 1176]
    B, T = summary["shapes"]["input_ids"]
    assert B == 3 and T == max(summary["prompt_tokens_per_example"])
    assert summary["special_tokens"]["pad"] == 151643


def test_readme_and_ci_run_the_same_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = "python -m pytest -q -x --timeout=900 tests"
    assert f'pip install -e ".[test]" && {command}' in readme
    assert "\n" + command + "\n" in ci
    demo = "pip install -e . && python -m vrft_jax.main --config configs/demo.py --workdir"
    assert demo in readme and (REPO / "configs" / "demo.py").is_file()
