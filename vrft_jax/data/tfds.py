"""Fine-grained classification through `tfds.data_source` (array_record, random access).

Works without TensorFlow: `tfds.data_source` reads prepared array_record files from `data_dir`
and never downloads (`download=False`). Images are kept as encoded bytes (`SkipDecoding`) so
labels can be scanned cheaply for K-shot sampling and images are decoded in the pipeline's
workers. Answers are the TFDS class names with underscores read as spaces.

Note: the paper's test sets are CoOp splits (Flowers 2463, Pets 3669, Cars 8041 images). TFDS's
pets and cars test splits have the same sizes; TFDS's flowers test split has 6149 images.
"""

from vrft_jax.data import templates
from vrft_jax.data.example import DataError, Example, classification_solution, k_shot

SUBJECTS = {"oxford_flowers102": "flowers", "oxford_iiit_pet": "pets", "cars196": "cars"}
_SKIP = ("image", "segmentation_mask")  # encoded image features left undecoded


class TfdsClassification:
    """K-shot (or full) classification examples from a prepared TFDS data set."""

    def __init__(self, name: str, split: str, data_dir: str = "", *, shots: int = 0, seed: int = 0):
        import tensorflow_datasets as tfds

        if name not in SUBJECTS:
            raise DataError(f"config.data.tfds_name={name!r}: expected one of {sorted(SUBJECTS)}")
        builder = tfds.builder(name, data_dir=data_dir or None)
        features = builder.info.features
        self.class_names = [n.replace("_", " ") for n in features["label"].names]
        decoders = {k: tfds.decode.SkipDecoding() for k in _SKIP if k in features}
        try:
            self.records = tfds.data_source(
                name, split=split, data_dir=data_dir or None, download=False, decoders=decoders
            )
        except Exception as e:  # TFDS raises several types for missing data; say what to do
            raise DataError(
                f"TFDS {name!r} split {split!r} not found under data_dir={data_dir!r}; prepare it "
                "once with `tfds build` (array_record format) on a machine with network: {e}"
            ) from e
        self.name, self.split = name, split
        labels = [int(self.records[i]["label"]) for i in range(len(self.records))]
        self.indices = k_shot(list(range(len(labels))), labels, shots, seed)
        self.indices.sort()
        self.problem = templates.classification_problem(SUBJECTS[name])

    def __len__(self) -> int:
        return len(self.indices)

    def row_key(self, index: int) -> str:
        return f"{self.name}/{self.split}/{self.indices[index]}"

    def row_where(self, index: int) -> str:
        return f"TFDS {self.name} split {self.split} record {self.indices[index]}"

    def __getitem__(self, index: int) -> Example:
        position = self.indices[index]
        record = self.records[position]
        label = int(record["label"])
        name = self.class_names[label]
        file_name = record.get("file_name", b"")
        file_name = file_name.decode() if isinstance(file_name, bytes) else str(file_name)
        return Example(
            image=record["image"],
            problem=self.problem,
            task="classification",
            solution=classification_solution(name),
            example_id=f"{self.name}/{self.split}/{position}",
            image_id=file_name or position,
            image_path=f"{self.name}/{self.split}[{position}] {file_name}".strip(),
            class_name=name,
            label=label,
        )
