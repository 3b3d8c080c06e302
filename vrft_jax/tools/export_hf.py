r"""Export a training checkpoint as a Hugging Face Qwen2-VL folder.

    python -m vrft_jax.tools.export_hf --workdir DIR --out OUT [--step N] [--dtype bfloat16]

Weights are written in --dtype; by default in the `torch_dtype` of the run's `model_init` folder
(bfloat16 for the hub's Qwen2-VL), else in the checkpoint's dtype (float32 master weights).

or, from Python, `export_hf(workdir, out, step=None) -> out`.

LoRA runs (config.lora.rank > 0; their checkpoints hold only the adapters): the frozen base is
rebuilt as the run built it (model_setup.build_model: model_init or the seeded preset, int8 targets
for QLoRA) and the export writes the merged weights W + (alpha/r) A @ B. With `--adapter_only` it
writes a PEFT adapter folder instead (adapter_config.json + adapter_model.safetensors, see
vrft_jax/peft_io.py) that `peft.PeftModel.from_pretrained(base, OUT)` loads onto the Hugging Face
base model; `--adapter_only` on a full fine-tuning run is an error. A `lora.full_warmup` run's base
is its SFT warm-up's result (workdir/warmup/), which no Hugging Face folder holds: the merged
export uses it, and `--adapter_only` also writes it as OUT/base/ (a Hugging Face folder of the
frozen base as the run held it: compute dtype, int8 targets dequantised, written in --dtype), the
adapter_config's base_model_name_or_path.

Reads `DIR/config.json` (written by `vrft_jax.main`) and the parameters of the latest (or the
chosen) step in `DIR/checkpoints` (only the parameters are read, not the optimizer state), rebuilds
the model, and writes into OUT (a local folder; DIR may also be gs://...):
  - config.json + model.safetensors (`hf.save_model`, the hub key names), which
    `transformers.Qwen2VLForConditionalGeneration.from_pretrained(OUT)` loads;
  - the tokenizer / processor files of the run: `config.tokenizer`, else `config.model_init` when it
    holds them, else the Qwen2-VL files shipped with the package (`--tokenizer` overrides);
  - generation_config.json with the run's own sampling settings (`config.sampler`: temperature,
    top_k, top_p; by default 1.0 / 0 / 1.0, i.e. plain sampling), every one written out.

Why the generation config matters: Qwen2-VL-Instruct folders ship `top_k=1, top_p=0.001,
temperature=0.01`, and recent transformers merge the model's generation config into any
`generate()` call that leaves a field unset. Sampling from such a folder is then silently
near-greedy: all G samples of a GRPO group come out equal, every advantage is 0 and training stalls
(Visual-RFT issue #122). The exported folder sets top_k, top_p and temperature explicitly, so
nothing near-greedy is inherited; for greedy evaluation pass `do_sample=False`.

The model shape comes from the checkpoint's JSON extra when it records one ("model": a Qwen2-VL
config dict), else from the run config (`model_init`'s config.json, else `model.preset`); the
checkpoint's parameters must match it (a mismatch names the first differing key).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import uuid

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from vrft_jax import config_utils, hf, lora
from vrft_jax.checkpoint import CHECKPOINT_SUBDIR, CheckpointError, check_tree_matches
from vrft_jax.models.config import SUPPORTED_MODEL_TYPES, QwenVLConfig, get_preset
from vrft_jax.models.qwen2_vl import Qwen2VL

# --adapter_only of a lora.full_warmup run: the base the adapters were trained on goes here.
BASE_SUBDIR = "base"
# Tokenizer and processor files copied next to the weights (whichever the folder has).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
)


# ---- Reading the run ----------------------------------------------------------------------------


def _workdir_path(workdir) -> epath.Path:
    """Absolute local path, or a remote one (gs://...) unchanged."""
    workdir = str(workdir)
    return epath.Path(workdir if "://" in workdir else os.path.abspath(os.path.expanduser(workdir)))


def checkpoint_steps(workdir) -> list[int]:
    """Finished checkpoint steps in WORKDIR/checkpoints (unfinished temporary folders skipped)."""
    directory = _workdir_path(workdir) / CHECKPOINT_SUBDIR
    if not directory.is_dir():
        return []
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    mgr = ocp.CheckpointManager(directory, options=options)
    try:
        return sorted(mgr.all_steps())
    finally:
        mgr.close()


def _choose_step(workdir, step: int | None) -> int:
    steps = checkpoint_steps(workdir)
    directory = str(_workdir_path(workdir) / CHECKPOINT_SUBDIR)
    if not steps:
        raise FileNotFoundError(
            f"no finished checkpoint in {directory!r}: is {workdir!r} a training workdir, and did "
            "the run save at least once (config.ckpt.every, or the end of the run)?"
        )
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"checkpoint step {step} not in {directory!r} (have {steps}).")
    return step


def read_run_config(workdir):
    """The run's config (WORKDIR/config.json as `vrft_jax.main` wrote it)."""
    path = _workdir_path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist: export needs the run's config.json (vrft_jax.main "
            "writes it into the workdir)."
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def model_config_for(run_config, extra: dict) -> QwenVLConfig:
    """The model shape of the run: checkpoint extra "model", else model_init, else the preset."""
    recorded = extra.get("model")
    if isinstance(recorded, dict) and recorded.get("model_type") in SUPPORTED_MODEL_TYPES:
        if "vision_config" in recorded or "text_config" in recorded:  # a config.json dict
            return QwenVLConfig.from_hf(recorded)
    if isinstance(recorded, dict) and {"vocab_size", "hidden_size"} <= set(recorded):
        fields = {f.name for f in dataclasses.fields(QwenVLConfig)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items() if k in fields}
        return QwenVLConfig(**kw)
    if run_config.model_init:
        return hf.read_config(os.path.expanduser(run_config.model_init))
    return get_preset(run_config.model.preset)


def _read_extra(step_dir: epath.Path) -> dict:
    if not (step_dir / "extra").is_dir():
        return {}
    try:
        extra = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / "extra")
    except Exception as e:  # Orbax raises many types for damaged files
        raise CheckpointError(f"checkpoint {str(step_dir)!r}: unreadable 'extra' item: {e}") from e
    return dict(extra or {})


def _read_params(step_dir: epath.Path, abstract_params: dict) -> dict:
    """The "params" subtree of the step's train state as host numpy arrays (nothing else read).

    abstract_params: ShapeDtypeStructs of the model's parameters (pure dict); shapes are checked
    against the checkpoint first, dtypes come from the checkpoint.
    """
    state_dir, source = step_dir / "state", repr(str(step_dir))
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    try:
        stored = checkpointer.metadata(state_dir).item_metadata.tree
    except Exception as e:
        raise CheckpointError(f"checkpoint {source} is unreadable: {e}") from e
    if not isinstance(stored, dict) or "params" not in stored:
        raise CheckpointError(f"checkpoint {source} has no 'params' entry (not a train state).")
    check_tree_matches({"params": abstract_params}, {"params": stored["params"]}, source)
    target = {
        "params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), stored["params"])
    }
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
    try:
        return checkpointer.restore(state_dir, args=args)["params"]
    except Exception as e:
        raise CheckpointError(f"checkpoint {source} is unreadable: {e}") from e


def restore_model(workdir, step: int | None = None, *, dtype=None, to_device: bool = True):
    """(Qwen2VL with the checkpoint's parameters, step, extra) for a training workdir.

    dtype: parameter and compute dtype (default: the checkpoint's parameter dtype). to_device=False
    keeps the parameters as host numpy arrays (enough for writing them out; no device copy).
    """
    run_config = read_run_config(workdir)
    step = _choose_step(workdir, step)
    step_dir = _workdir_path(workdir) / CHECKPOINT_SUBDIR / str(step)
    extra = _read_extra(step_dir)
    config = model_config_for(run_config, extra)

    shapes = nnx.eval_shape(lambda: Qwen2VL(config, rngs=nnx.Rngs(0)))
    params = _read_params(step_dir, nnx.to_pure_dict(nnx.state(shapes, nnx.Param)))
    name = jnp.dtype(dtype or jax.tree.leaves(params)[0].dtype).name
    params = jax.tree.map(lambda x: np.asarray(x).astype(name, copy=False), params)
    if to_device:
        params = jax.tree.map(jnp.asarray, params)
    config = config.replace(param_dtype=name, compute_dtype=name)
    graphdef, abstract, rest = nnx.split(
        nnx.eval_shape(lambda: Qwen2VL(config, rngs=nnx.Rngs(0))), nnx.Param, ...
    )
    nnx.replace_by_pure_dict(abstract, params)
    return nnx.merge(graphdef, abstract, rest), step, extra


def lora_rank(run_config) -> int:
    """The run's config.lora.rank (0: full fine-tuning, also for runs from before LoRA)."""
    return int((run_config.get("lora") or {}).get("rank", 0) or 0)


def restore_lora(workdir, step: int | None = None):
    """(base model, spec, adapters as host arrays, step) of a LoRA run's checkpoint; the base
    rebuilt exactly as the run built it: model_init or the seeded preset in the compute dtype, or
    for a lora.full_warmup run the warm-up's final master weights (workdir/warmup/)."""
    from vrft_jax.model_setup import build_model

    run_config = read_run_config(workdir)
    if "full_warmup" not in run_config.lora:  # a config.json from before the option
        run_config.lora.full_warmup = False
    step = _choose_step(workdir, step)
    step_dir = _workdir_path(workdir) / CHECKPOINT_SUBDIR / str(step)
    model = build_model(run_config)
    spec = lora.make_spec(run_config.lora, nnx.state(model, nnx.Param))
    adapters = _read_params(step_dir, lora.adapter_shapes(spec, run_config.model.master_dtype))
    if run_config.lora.full_warmup:
        params = nnx.state(model, nnx.Param)
        warmed = _read_params(warmup_dir(workdir, run_config), nnx.to_pure_dict(params))
        nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, warmed))
        nnx.update(model, params)
    return model, spec, adapters, step


def warmup_dir(workdir, run_config) -> epath.Path:
    """The step folder of a lora.full_warmup run's final warm-up params (its LoRA base)."""
    from vrft_jax.sft import WARMUP_DIR

    n = int(run_config.sft.warmup_steps)
    path = _workdir_path(workdir) / WARMUP_DIR / CHECKPOINT_SUBDIR / str(n)
    if not (path / "state").is_dir():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist: a lora.full_warmup run's adapters sit on the weights "
            "its SFT warm-up saved there, and export needs them."
        )
    return path


def merged_model(model, spec, adapters, dtype: str):
    """The Qwen2VL with every target's weight W + (alpha/r) A @ B, all params in `dtype`."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    base = lora.make_base(params, spec, model.config.compute_dtype)
    merged = jax.device_get(lora.merge(base, adapters, spec, jnp.dtype(dtype)))
    config = model.config.replace(param_dtype=dtype, compute_dtype=dtype)
    graphdef, abstract, rest = nnx.split(
        nnx.eval_shape(lambda: Qwen2VL(config, rngs=nnx.Rngs(0))), nnx.Param, ...
    )
    nnx.replace_by_pure_dict(abstract, merged)
    return nnx.merge(graphdef, abstract, rest)


# ---- Writing the folder -------------------------------------------------------------------------


def export_dtype(run_config) -> str | None:
    """The default weight dtype of an export: the `torch_dtype` of the run's model_init folder
    (the run started from those weights; the hub's Qwen2-VL are bfloat16), None (= the
    checkpoint's float32 master weights) for a random init or a folder no longer there."""
    if not run_config.get("model_init"):
        return None
    return hf.torch_dtype(os.path.expanduser(run_config.model_init))


def generation_config(model_config: QwenVLConfig, sampler=None) -> dict:
    """generation_config.json: every sampling field explicit (see the module docstring)."""
    eos = [model_config.eos_token_id]
    if model_config.pad_token_id not in eos:
        eos.append(model_config.pad_token_id)  # <|endoftext|> also ends a sequence
    return {
        "bos_token_id": model_config.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": model_config.pad_token_id,
        "do_sample": True,
        "temperature": float(sampler.temperature) if sampler else 1.0,
        "top_k": int(sampler.top_k) if sampler else 0,
        "top_p": float(sampler.top_p) if sampler else 1.0,
    }


def tokenizer_dir_for(run_config, override: str | None = None) -> str:
    folder = os.path.expanduser(override) if override else None
    folder = folder or config_utils.resolve_tokenizer_dir(run_config)
    if not os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
        raise FileNotFoundError(
            f"tokenizer folder {folder!r} (from the run config) has no tokenizer_config.json; "
            "pass --tokenizer with the run's tokenizer folder."
        )
    return folder


def _prepare_out(out: str, overwrite: bool) -> str:
    """A fresh temporary folder next to `out` (renamed to `out` when complete)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"export folder {out!r} exists and is a file.")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(
            f"export folder {out!r} exists and is not empty; choose another --out or pass "
            "--overwrite."
        )
    tmp = f"{out.rstrip(os.sep)}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(tmp)
    except OSError as e:
        raise OSError(
            e.errno, f"cannot write the export folder {out!r}: {e.strerror or e} (at {tmp!r})"
        ) from e
    return tmp


def export_hf(
    workdir,
    out,
    step: int | None = None,
    *,
    dtype: str | None = None,
    tokenizer: str | None = None,
    overwrite: bool = False,
    adapter_only: bool = False,
) -> str:
    """Writes checkpoint `step` (default: latest) of `workdir` as a Hugging Face folder `out`.

    dtype: saved weight dtype ("float32", "bfloat16"; default: `export_dtype`). Returns `out`.
    adapter_only: a LoRA run's adapters as a PEFT folder (float32) instead of the merged model.
    The folder is written under a temporary name and renamed when complete, so a failed export
    never leaves a half-written `out`.
    """
    workdir = str(_workdir_path(workdir))
    out = os.path.abspath(os.path.expanduser(str(out)))
    run_config = read_run_config(workdir)
    rank = lora_rank(run_config)
    if adapter_only and not rank:
        raise ValueError(
            f"--adapter_only: {workdir!r} is a full fine-tuning run (config.lora.rank=0), it has "
            "no adapters; export the full model without --adapter_only"
        )
    token_dir = tokenizer_dir_for(run_config, tokenizer)
    _choose_step(workdir, step)  # fail on a missing step before touching `out`
    dtype = dtype or export_dtype(run_config)
    tmp = _prepare_out(out, overwrite)
    try:
        if adapter_only:
            from vrft_jax import peft_io

            model, spec, adapters, step = restore_lora(workdir, step)
            base_name = run_config.get("model_init") or ""
            if run_config.lora.get("full_warmup"):  # the base is the run's warm-up, not a folder
                hf.save_model(merged_model(model, spec, {}, dtype or "float32"),
                              os.path.join(tmp, BASE_SUBDIR))  # fmt: skip
                base_name = os.path.join(out, BASE_SUBDIR)
            peft_io.write_adapters(tmp, adapters, spec, model.config, base_name)
        else:
            if rank:
                base, spec, adapters, step = restore_lora(workdir, step)
                model = merged_model(base, spec, adapters, dtype or "float32")
            else:
                model, step, _ = restore_model(workdir, step, dtype=dtype, to_device=False)
            hf.save_model(model, tmp)
        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(token_dir, name)):
                shutil.copy2(os.path.join(token_dir, name), os.path.join(tmp, name))
        sampler = run_config.get("sampler")
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump(generation_config(model.config, sampler), f, indent=2)
        with open(os.path.join(tmp, "vrft_export.json"), "w") as f:
            json.dump({"workdir": workdir, "step": step, "tokenizer": token_dir}, f, indent=2)
        if os.path.isdir(out):
            shutil.rmtree(out)  # empty, or --overwrite
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---- Command line -------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vrft_jax.tools.export_hf",
        description="Write a vrft_jax training checkpoint as a Hugging Face Qwen2-VL folder.",
    )
    parser.add_argument("--workdir", required=True, help="the training run's --workdir")
    parser.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument(
        "--dtype",
        default=None,
        help="float32 or bfloat16 (default: model_init's torch_dtype, else the checkpoint's)",
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the run's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument(
        "--adapter_only",
        action="store_true",
        help="LoRA runs: write a PEFT adapter folder instead of the merged model",
    )
    args = parser.parse_args(argv)
    try:
        path = export_hf(
            args.workdir,
            args.out,
            args.step,
            dtype=args.dtype,
            tokenizer=args.tokenizer,
            overwrite=args.overwrite,
            adapter_only=args.adapter_only,
        )
    except (OSError, CheckpointError, ValueError) as e:
        print(f"export_hf: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
