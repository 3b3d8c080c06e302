"""Qwen3-VL (dense) checkpoint tensors: the key table and the names the files use.

The published Qwen3-VL folders and transformers 5 use the in-memory tensor names
(`model.visual.*`, `model.language_model.*`, `lm_head.weight`). hf.py normalises names to
`visual.*` / `model.*` on read (so the table below uses those) and `saved_name` writes the
transformers-5 names back (transformers has no renaming rule for Qwen3-VL's older names).
Torch Linear weights are (out, in); ours are (in, out) with heads split out, hence the reshapes.
"""


def saved_name(key: str) -> str:
    """Normalised name (`visual.*`, `model.*`) -> the transformers-5 name Qwen3-VL files use."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key.removeprefix("model.")
    return key


def table(c) -> dict:
    """Our parameter path -> (normalised hub key template, to_ours, to_hf); {i} = layer index.
    The Qwen3-VL part: the vision tower and the decoder layers' q/k norms (hf.py adds the decoder
    keys every family shares)."""
    ve, vh, vd = c.vision_embed_dim, c.vision_num_heads, c.vision_head_dim
    same = (lambda w: w, lambda w: w)
    linear = (lambda w: w.T, lambda w: w.T)
    one = (lambda w: w[None], lambda w: w[0])  # our main merger is a stack of one
    one_linear = (lambda w: w.T[None], lambda w: w[0].T)

    def heads_out(n, dim):  # torch (E, n*dim) <-> ours (n, dim, E)
        return (lambda w: w.T.reshape(n, dim, -1), lambda w: w.reshape(n * dim, -1).T)

    vb, lb = "visual.blocks.{i}.", "model.layers.{i}."
    mg, ds = "visual.merger.", "visual.deepstack_merger_list.{i}."
    t = {
        "visual/patch_embed": (
            "visual.patch_embed.proj.weight",
            lambda w: w.reshape(w.shape[0], -1).T,
            lambda w: w.T.reshape(
                -1, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size
            ),
        ),
        "visual/patch_bias": ("visual.patch_embed.proj.bias", *same),
        "visual/pos_embed": ("visual.pos_embed.weight", *same),
        "visual/blocks/norm1_scale": (vb + "norm1.weight", *same),
        "visual/blocks/norm1_bias": (vb + "norm1.bias", *same),
        "visual/blocks/norm2_scale": (vb + "norm2.weight", *same),
        "visual/blocks/norm2_bias": (vb + "norm2.bias", *same),
        "visual/blocks/qkv_kernel": (
            vb + "attn.qkv.weight",
            lambda w: w.T.reshape(ve, 3, vh, vd),
            lambda w: w.reshape(ve, -1).T,
        ),
        "visual/blocks/qkv_bias": (
            vb + "attn.qkv.bias",
            lambda w: w.reshape(3, vh, vd),
            lambda w: w.reshape(-1),
        ),
        "visual/blocks/proj_kernel": (vb + "attn.proj.weight", *heads_out(vh, vd)),
        "visual/blocks/proj_bias": (vb + "attn.proj.bias", *same),
        "visual/blocks/fc1_kernel": (vb + "mlp.linear_fc1.weight", *linear),
        "visual/blocks/fc1_bias": (vb + "mlp.linear_fc1.bias", *same),
        "visual/blocks/fc2_kernel": (vb + "mlp.linear_fc2.weight", *linear),
        "visual/blocks/fc2_bias": (vb + "mlp.linear_fc2.bias", *same),
        "visual/merger/ln_scale": (mg + "norm.weight", *one),
        "visual/merger/ln_bias": (mg + "norm.bias", *one),
        "visual/merger/fc1_kernel": (mg + "linear_fc1.weight", *one_linear),
        "visual/merger/fc1_bias": (mg + "linear_fc1.bias", *one),
        "visual/merger/fc2_kernel": (mg + "linear_fc2.weight", *one_linear),
        "visual/merger/fc2_bias": (mg + "linear_fc2.bias", *one),
        "visual/deepstack_mergers/ln_scale": (ds + "norm.weight", *same),
        "visual/deepstack_mergers/ln_bias": (ds + "norm.bias", *same),
        "visual/deepstack_mergers/fc1_kernel": (ds + "linear_fc1.weight", *linear),
        "visual/deepstack_mergers/fc1_bias": (ds + "linear_fc1.bias", *same),
        "visual/deepstack_mergers/fc2_kernel": (ds + "linear_fc2.weight", *linear),
        "visual/deepstack_mergers/fc2_bias": (ds + "linear_fc2.bias", *same),
        "language_model/layers/q_norm": (lb + "self_attn.q_norm.weight", *same),
        "language_model/layers/k_norm": (lb + "self_attn.k_norm.weight", *same),
    }
    return t
