"""Every default of vrft_jax in one commented block.

Other config files start from `get_config()` here and change only what differs. Library code reads
fields directly (never `config.get(x, default)`), so a default lives here and nowhere else. The
config is locked by the entry point: a misspelled `--config.field=...` fails naming the field.

Shape letters used in comments: B prompts, G samples per prompt, T tokens, S image patches.
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()

    # ---- Run ------------------------------------------------------------------------------------
    c.seed = 42  # one seed drives data order, init, sampling (the reference uses 42)
    c.trainer = "grpo"  # "grpo" (Visual-RFT) or "sft" (the paper's supervised baseline)
    # Rollout steps (what the loop, the logs and checkpoints count; each does grpo.mu optimizer
    # updates, so the lr schedule spans total_steps * grpo.mu updates); 0 = evaluate only.
    c.total_steps = 200
    c.log_every = 1  # metrics to JSON lines + TensorBoard every N steps
    c.sample_every = 10  # write a few completions with their rewards every N steps
    c.num_logged_samples = 4  # how many completions each time
    c.eval_every = 0  # run the evaluators every N steps (0 = only at the end)
    c.eval_at_start = False  # also evaluate before training (and after an SFT warm-up)
    c.distributed = False  # call jax.distributed.initialize() (multi-host TPU/GPU launches)
    c.runlocal = False  # shrink a paper config to run on a laptop

    # ---- Model ----------------------------------------------------------------------------------
    c.model_init = ""  # local HF Qwen-VL folder (family from its config.json); "" = model.preset
    c.resume = ""  # an orbax checkpoint dir to start from (after the workdir's own checkpoints)
    c.tokenizer = ""  # tokenizer/processor folder; "" = model_init, else the shipped Qwen2-VL files
    c.model = ml_collections.ConfigDict()
    c.model.preset = (
        "tiny"  # random init: "tiny", "2b", "7b", "qwen2_5_vl-tiny|3b|7b", "qwen3_vl-tiny|2b|4b|8b"
    )
    # Mixed precision as DeepSpeed bf16 / MaxText: master weights and AdamW moments in float32
    # (a bf16 weight cannot take a 1e-6 step: near |w| = 0.02 its spacing is 1.2e-4); forward,
    # backward, reference and sampler in compute_dtype ("bfloat16" on accelerators, the weights
    # cast inside each jitted step). master_dtype="bfloat16" only to save memory where lr is
    # large enough; the run warns at start-up when most updates would round away.
    c.model.master_dtype = "float32"
    c.model.compute_dtype = "float32"  # "bfloat16" on GPU/TPU (the paper configs)
    c.model.attention = "xla"  # jax.nn.dot_product_attention implementation: "xla" or "cudnn"
    c.model.remat = "none"  # activation checkpointing of each scanned layer: "none", "full", "dots"
    c.model.vision_remat = "full"  # the vision tower's own (saves its attention maps for backward)
    c.model.scan_layers = True  # one compiled decoder/vision layer scanned over depth
    # Coordinates the model reads and writes boxes in (vrft_jax/box_frames.py): "auto" = its
    # family's (Qwen2-VL, Qwen3-VL: "relative_1000"; Qwen2.5-VL: "absolute_pixels" of the resized
    # image). Prompts ask in it; answers are converted to the 0..1000 ground truth per example.
    c.model.box_frame = "auto"

    # ---- Inputs (prompt side) -------------------------------------------------------------------
    c.input = ml_collections.ConfigDict()
    c.input.min_pixels = 3136  # image processor lower bound (4 * 28 * 28)
    c.input.max_pixels = 401408  # upper bound (512 * 28 * 28 -> at most 512 visual tokens)
    c.input.prompt_template = "detection"  # "detection", "classification", "grounding", "raw"
    c.input.classification_subject = "aircraft"  # which classification sentence (see prompts.py)
    c.input.max_prompt_length = 1024  # prompts longer than this fail loudly (never truncated)
    c.input.batch_size = 16  # prompts per optimizer step (B); reference: 8 GPUs x 1 x 2 accum
    c.input.prompt_buckets = (64, 128, 256, 384, 512, 768, 1024)  # padded prompt lengths (T)
    c.input.patch_buckets = (256, 1024, 2048, 4096, 8192)  # padded patch counts (S) per batch

    # ---- Data -----------------------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    # source: "synthetic", "rows", "coco", "lvis", "tfds", "image_folder", "lisa"
    c.data.source = "synthetic"
    c.data.path = ""  # parquet/jsonl rows, annotation JSON, LISA JSON, or image folder root
    c.data.image_root = ""  # folder the rows' / annotations' image paths are relative to
    c.data.tfds_name = ""  # e.g. "oxford_flowers102" (prepared locally, no download)
    c.data.tfds_data_dir = ""  # TFDS data_dir holding prepared data
    c.data.split = "train"
    c.data.eval_split = "test"
    c.data.shots = 0  # K-shot subset per category/class (0 = all)
    c.data.categories = ()  # category names to keep (detection); () = the source's default
    c.data.negatives = False  # add "No Objects" examples (detection)
    c.data.num_workers = 2  # host decode/preprocess workers
    # Fail before step 1 if more than this fraction of the train + eval rows is bad (a solution that
    # does not parse, a missing or corrupt image); fewer are dropped and listed (data/validate.py).
    c.data.max_bad_fraction = 0.01
    c.data.synthetic_task = "mixed"  # demo task: "classification", "colour", "detection", "mixed"
    c.data.synthetic_size = 112  # synthetic image side in pixels
    c.data.num_eval_examples = 64  # held-out examples for evaluation
    c.data.eval_path = ""  # evaluation annotations/rows/folder; "" = data.path
    c.data.eval_image_root = ""  # "" = data.image_root
    c.data.eval_categories = ()  # detection categories to evaluate; () = data.categories
    c.data.max_examples = 0  # random subset of the train examples (0 = all; OV COCO: 6000)
    c.data.image_folder_subject = "aircraft"  # image_folder prompt: aircraft, flowers, pets, cars

    # ---- Sampler (rollouts) ---------------------------------------------------------------------
    c.sampler = ml_collections.ConfigDict()
    c.sampler.max_new_tokens = 256  # completion length C (TRL default used by the reference)
    c.sampler.temperature = 1.0  # the reference hard-codes 1.0
    c.sampler.top_k = 0  # 0 = off
    c.sampler.top_p = 1.0  # 1.0 = off
    c.sampler.batch_buckets = (1, 2, 4, 8, 16, 32, 64, 128)  # padded prompt counts

    # ---- Rewards --------------------------------------------------------------------------------
    # (name, weight) pairs from vrft_jax.rewards' registry; total reward = weighted sum.
    c.rewards = (("format", 1.0), ("detection_iou", 1.0), ("detection_confidence", 1.0))
    c.reward = ml_collections.ConfigDict()
    c.reward.iou_threshold = 0.5  # a prediction matches a box only with IoU > this (strict)
    c.reward.iou_denominator = "max"  # "max" (reference code) or "predictions" (paper text)
    c.reward.classification_match = "exact"  # "exact" or "contains"
    c.reward.grounding = "iou"  # "iou" or "giou_plus_one" (reference)

    # ---- GRPO -----------------------------------------------------------------------------------
    c.grpo = ml_collections.ConfigDict()
    c.grpo.G = 8  # samples per prompt (reference: 8 for 2B, 4 for 7B)
    c.grpo.beta = 0.04  # KL weight; the reference's TRL default (newer TRL silently uses 0.0)
    c.grpo.epsilon = 0.2  # clip range low side: ratio >= 1 - epsilon
    c.grpo.epsilon_high = 0.2  # clip range high side: ratio <= 1 + epsilon_high (DAPO: 0.28)
    # Policy updates per rollout batch; when mu > 1 the old log-probs are the rollout policy's,
    # computed once before the first update, so later updates see ratio != 1 and can clip.
    c.grpo.mu = 1
    c.grpo.advantage = "grpo"  # "grpo" (r-mean)/(std+1e-4), "dr_grpo" (no std), "rloo"
    c.grpo.kl_estimator = "k3"  # "k1", "k2", "k3"
    # "seq_mean_token_mean" (reference), "token_mean" (DAPO), "seq_mean_token_sum_norm" (Dr. GRPO)
    c.grpo.loss_aggregation = "seq_mean_token_mean"
    # DAPO dynamic sampling: a group whose G rewards are all equal has no gradient; sample more
    # prompts (from the same data stream) until the batch holds input.batch_size groups with
    # signal. Each try is one rollout of input.batch_size prompts; out of tries, the run stops.
    c.grpo.dynamic_sampling = False
    c.grpo.max_sampling_tries = 8
    c.grpo.micro_batch_size = 8  # sequences per forward/backward (gradient accumulation)
    # True: each update takes its log-prob VALUES from the log-prob program that gives the reference
    # and old log-probs (the gradient from its own forward), so equal weights give equal values:
    # KL exactly 0 at step 0 and the first update's ratio exactly 1. Costs one more forward per
    # update when beta != 0 (and per later update when mu > 1). False: the update's own forward,
    # whose fusions differ by up to ~30 float32 ulps of a log-prob (step-0 KL ~1e-11).
    c.grpo.exact_logprob_values = True

    # ---- SFT baseline ---------------------------------------------------------------------------
    c.sft = ml_collections.ConfigDict()
    c.sft.micro_batch_size = 8
    c.sft.warmup_steps = 0  # demo: supervised steps before GRPO to learn the answer format
    c.sft.lr = 0.0  # constant learning rate of the warm-up (0 = optim.lr)
    # A noisy teacher: "TRUE>GIVEN@FRACTION[,...]" trains that fraction of class TRUE's examples
    # on the answer GIVEN (classification; rewards keep the true answer), e.g. "blue>green@0.7".
    c.sft.relabel = ""
    c.sft.think = ""  # SFT target = "<think>{think}</think>" + solution when set, else solution

    # ---- Optimizer (Optax AdamW) ----------------------------------------------------------------
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-6  # reference (TRL default)
    c.optim.schedule = "linear"  # "linear" decay to 0, "cosine", or "constant"
    c.optim.warmup_steps = 0  # optimizer updates (grpo.mu per rollout step)
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0  # global norm
    c.optim.mu_dtype = ""  # first Adam moment's dtype; "" = master_dtype, "bfloat16" saves memory
    c.optim.freeze = ""  # regex over parameter paths to freeze, e.g. "^visual/" (vision tower)
    c.optim.max_nonfinite_steps = 3  # stop after this many skipped non-finite steps in a row

    # ---- LoRA / QLoRA (vrft_jax/lora.py) ---------------------------------------------------------
    # Adapters W + (alpha/rank) * A @ B on the weight matrices whose path matches `targets`; only
    # they train (float32, with their AdamW state; checkpoints hold only them); the base is frozen
    # in compute_dtype and is the GRPO reference with the adapters off (no second copy).
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0  # 0 = full fine-tuning
    c.lora.alpha = 16.0  # scale alpha / rank (PEFT's lora_alpha)
    # Regex over parameter paths; default: the decoder's q/k/v/o and gate/up/down projections
    # (add "|^visual/blocks/\w+_kernel$" for the vision tower).
    c.lora.targets = r"^language_model/layers/\w+_kernel$"
    c.lora.quantize = "none"  # QLoRA: "int8" stores the targets' base per-channel int8
    c.lora.init = ""  # a PEFT adapter folder to start from (adapter_config.json + safetensors)
    # True: the SFT warm-up (sft.warmup_steps > 0, GRPO) trains every weight (float32 master, as
    # without LoRA) and its result becomes the frozen base; GRPO then trains fresh adapters on
    # it (reference: that base, KL 0 at the start). For a model whose output layer does not yet
    # know the answer tokens (the random demo model). Resume reads the base back from warmup/.
    c.lora.full_warmup = False

    # ---- Mesh and sharding ----------------------------------------------------------------------
    # Axis sizes; -1 takes the remaining devices. The batch splits over data x fsdp.
    c.mesh = (("data", 1), ("fsdp", -1), ("tensor", 1))
    # (logical axis, mesh axis or None) pairs overriding sharding.DEFAULT_RULES
    # (embed/vision_embed -> fsdp; mlp/vision_mlp/heads/kv_heads/vision_heads/vocab -> tensor).
    c.mesh_rules = ()

    # ---- Checkpoints ----------------------------------------------------------------------------
    c.ckpt = ml_collections.ConfigDict()
    c.ckpt.every = 100  # steps between saves (0 = only at the end and on SIGTERM)
    c.ckpt.keep = 3  # keep the last K
    c.ckpt.async_save = True

    # ---- Evaluation -----------------------------------------------------------------------------
    c.eval = ml_collections.ConfigDict()
    c.eval.max_new_tokens = 256  # greedy decoding length for evaluators
    c.eval.batch_size = 16
    # Also score num_samples sampled completions per held-out prompt (sampler settings): the
    # held-out expected reward GRPO optimises. 0 = greedy evaluation only.
    c.eval.num_samples = 0
    c.eval.detection_gate = "gt"  # categories asked per image: "gt", "verified" (LVIS), "all", an
    # exist-map JSON path {image id or file name: [names]} (the reference gates with its baseline)

    return c
