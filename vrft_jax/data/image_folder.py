"""Classification from a class-per-subfolder tree (for sets TFDS lacks, e.g. FGVC-Aircraft).

Layout: `root/<split>/<class name>/*.jpg` when `root/<split>` exists, else `root/<class name>/*`.
The folder name is the answer (underscores read as spaces). Labels index the sorted class names.
"""

import os

from vrft_jax.data import templates
from vrft_jax.data.example import DataError, Example, classification_solution, k_shot

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class ImageFolder:
    def __init__(
        self,
        root: str,
        split: str = "",
        *,
        subject: str = "aircraft",
        shots: int = 0,
        seed: int = 0,
    ):
        base = (
            os.path.join(root, split)
            if split and os.path.isdir(os.path.join(root, split))
            else root
        )
        if not os.path.isdir(base):
            raise DataError(f"config.data.path={root!r}: not a folder")
        self.class_dirs = sorted(
            d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))
        )
        if not self.class_dirs:
            raise DataError(f"{base}: no class subfolders")
        files, labels = [], []
        for label, d in enumerate(self.class_dirs):
            for f in sorted(os.listdir(os.path.join(base, d))):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    files.append(os.path.join(base, d, f))
                    labels.append(label)
        picks = sorted(k_shot(files, labels, shots, seed))
        self.files = [files[i] for i in picks]
        self.labels = [labels[i] for i in picks]
        self.data_files = self.files  # the validation cache key
        self.class_names = [d.replace("_", " ") for d in self.class_dirs]
        self.problem = templates.classification_problem(subject)

    def __len__(self) -> int:
        return len(self.files)

    def row_key(self, index: int) -> str:
        return self.files[index]

    def row_where(self, index: int) -> str:
        return self.files[index]

    def __getitem__(self, index: int) -> Example:
        path, label = self.files[index], self.labels[index]
        name = self.class_names[label]
        return Example(
            image=path,
            problem=self.problem,
            task="classification",
            solution=classification_solution(name),
            example_id=path,
            image_id=os.path.basename(path),
            image_path=path,
            class_name=name,
            label=label,
        )
