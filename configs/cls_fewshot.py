r"""Few-shot fine-grained classification: K images per class, one data set per run (Table 2).

Data sets (arg `dataset=`): flowers (TFDS oxford_flowers102, 102 classes), pets (oxford_iiit_pet,
37), cars (cars196, 196) through `tfds.data_source` on prepared array_record data (no download at
run time), and aircraft (FGVC-Aircraft, 100 variants) from a class-per-subfolder tree
`<path>/{train,test}/<variant>/*.jpg`. Answers are the class names; `classification/accuracy`
is an exact match after normalisation, `classification/accuracy_reference` the reference's
substring match (which also counts empty answers).

Test sets: the paper uses CoOp splits (Flowers 2463, Pets 3669, Cars 8041, Aircraft 3333). TFDS's
pets and cars test splits have those sizes; TFDS's flowers test split has 6149 images (point
eval at a CoOp-style folder with source=image_folder for the paper's exact split).

Expected (paper v1, Qwen2-VL-2B, accuracy % averaged over the 4 sets): 1-shot baseline 56.0 /
SFT 51.7 / Visual-RFT 80.3; 4-shot SFT 55.6 / Visual-RFT 81.9.

Command (arg: dataset=flowers|pets|cars|aircraft, shots=1|2|4|8|16,
  model=2b|7b|qwen2_5_vl-3b|qwen2_5_vl-7b, runlocal):
  python -m vrft_jax.main --config configs/cls_fewshot.py:dataset=flowers,shots=4 \
    --workdir /tmp/flowers4 --config.data.tfds_data_dir=data/tensorflow_datasets
  python -m vrft_jax.main --config configs/cls_fewshot.py:dataset=aircraft,shots=4 \
    --workdir /tmp/aircraft4 --config.data.path=data/fgvc_aircraft
"""

from configs import base, common

TFDS_NAMES = {"flowers": "oxford_flowers102", "pets": "oxford_iiit_pet", "cars": "cars196"}


def get_config(arg=None):
    a = common.parse_arg(arg, dataset="flowers", shots=4, model="2b", runlocal=False)
    if a.dataset not in (*TFDS_NAMES, "aircraft"):
        raise ValueError(f"dataset={a.dataset!r}: expected flowers, pets, cars or aircraft")
    c = base.get_config()
    common.reference_training(c, a.model)
    c.total_steps = 200  # README: "200 steps should be sufficient" for a few hundred samples
    c.data.shots = a.shots
    c.data.split, c.data.eval_split = "train", "test"
    if a.dataset == "aircraft":
        c.data.source = "image_folder"
        c.data.path = "data/fgvc_aircraft"
        c.data.image_folder_subject = "aircraft"
    else:
        c.data.source = "tfds"
        c.data.tfds_name = TFDS_NAMES[a.dataset]
        c.data.tfds_data_dir = "data/tensorflow_datasets"
    c.input.classification_subject = a.dataset
    c.rewards = (("format", 1.0), ("classification", 1.0))
    c.reward.classification_match = "exact"  # the reference's substring match is hackable
    common.apply_lora(c, a.lora)
    if a.runlocal:
        common.shrink_for_local(c)
    return c
