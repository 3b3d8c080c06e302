"""`make_source(config.data, role, seed)`: the data source a config names.

role "train" reads `path` / `image_root` / `split` / `categories` with `shots` and `negatives`;
role "eval" reads `eval_path` / `eval_image_root` / `eval_split` / `eval_categories` (each falling
back to the train field when empty), every example (no K-shot), at most `num_eval_examples`
(0 = all). Rows the validation pass (`vrft_jax.data.validate`) found bad are left out (before the
eval cap, so the held-out set keeps its size).
"""

from vrft_jax.data import validate
from vrft_jax.data.example import DataError

SOURCES = ("synthetic", "rows", "coco", "lvis", "tfds", "image_folder", "lisa")


def _pick(eval_value, train_value, role):
    return eval_value if role == "eval" and eval_value else train_value


def _cap(source, limit):
    """The first `limit` examples of a source (0 = all)."""
    if not limit or len(source) <= limit:
        return source
    return _Prefix(source, limit)


class _Prefix:
    def __init__(self, source, length):
        self.source, self.length = source, length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.source[index]

    def task_at(self, index):
        return self.source.task_at(index) if hasattr(self.source, "task_at") else self[index].task

    def __getattr__(self, name):  # e.g. a COCO source's annotation_file for the evaluator
        return getattr(self.source, name)


class _Kept(_Prefix):
    """The rows of a source at `indices` (those the validation pass did not drop)."""

    def __init__(self, source, indices):
        super().__init__(source, len(indices))
        self.indices = indices

    def __getitem__(self, index):
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.source[self.indices[index]]

    def task_at(self, index):
        if hasattr(self.source, "task_at"):
            return self.source.task_at(self.indices[index])
        return self[index].task

    def row_key(self, index):
        return validate.row_key(self.source, self.indices[index])

    def row_where(self, index):
        return self.source.row_where(self.indices[index])


def _drop_bad(source):
    """The source without the rows `validate.validate_data` found bad in this process."""
    dropped = validate.dropped_rows()
    if not dropped:
        return source
    if hasattr(source, "drop_rows"):  # COCO: also leaves the images out of its ground truth
        return source.drop_rows(dropped)
    kept = [i for i in range(len(source)) if validate.row_key(source, i) not in dropped]
    return source if len(kept) == len(source) else _Kept(source, kept)


def make_source(
    data, role: str, seed: int, *, detection_gate: str = "gt", cap: bool = True, drop: bool = True
):
    """A random-access source of `Example`s. data: config.data; role: "train" or "eval".

    cap=False ignores `num_eval_examples` for sources cut by prefix; drop=False keeps the rows the
    validation pass dropped (the pass itself reads sources that way).
    """
    return _make(data, role, seed, detection_gate, cap, _drop_bad if drop else lambda s: s)


def _make(data, role, seed, detection_gate, cap, drop_bad):
    if role not in ("train", "eval"):
        raise ValueError(f"role {role!r}: expected 'train' or 'eval'")
    is_eval = role == "eval"
    path = _pick(data.eval_path, data.path, role)
    image_root = _pick(data.eval_image_root, data.image_root, role)
    split = data.eval_split if is_eval else data.split
    limit = data.num_eval_examples if is_eval else 0
    prefix = limit if cap else 0  # sources cut by prefix; COCO cuts at whole images itself
    shots = 0 if is_eval else data.shots

    if data.source == "synthetic":
        from vrft_jax.data.synthetic import SyntheticShapes

        length = data.num_eval_examples if is_eval else None
        return SyntheticShapes(data.synthetic_task, role, seed, data.synthetic_size, length)
    if not path and data.source != "tfds":
        raise DataError(f"config.data.source={data.source!r} needs config.data.path")
    if data.source == "rows":
        from vrft_jax.data.rows import Rows

        return _cap(drop_bad(Rows(path, image_root)), prefix)
    if data.source in ("coco", "lvis"):
        from vrft_jax.data.coco import CocoDetection

        source = CocoDetection(
            path,
            image_root,
            mode=role,
            categories=tuple(_pick(data.eval_categories, data.categories, role)),
            shots=shots,
            seed=seed,
            negatives=data.negatives and not is_eval,
            max_examples=0 if is_eval else data.max_examples,
            gate=detection_gate,
            max_eval_examples=limit,
        )
        return drop_bad(source)
    if data.source == "tfds":
        from vrft_jax.data.tfds import TfdsClassification

        source = TfdsClassification(
            data.tfds_name, split, data.tfds_data_dir, shots=shots, seed=seed
        )
        return _cap(drop_bad(source), prefix)
    if data.source == "image_folder":
        from vrft_jax.data.image_folder import ImageFolder

        subject = data.image_folder_subject
        source = ImageFolder(path, split, subject=subject, shots=shots, seed=seed)
        return _cap(drop_bad(source), prefix)
    if data.source == "lisa":
        from vrft_jax.data.lisa import LisaGrounding

        return _cap(drop_bad(LisaGrounding(path)), prefix)
    raise DataError(f"config.data.source={data.source!r}: expected one of {SOURCES}")
