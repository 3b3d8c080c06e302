"""Visual-RFT's published rows (`image`, `problem`, `solution`) from parquet or JSON lines.

Hugging Face hosts the ViRFT data sets as parquet shards whose `image` column is a struct
{"bytes": ..., "path": ...}. The reference reads them with `load_from_disk`, which only works on
`save_to_disk` output; here the parquet files are read directly with pyarrow. JSON lines (or a
JSON list) with `image` / `image_path` holding a path relative to `image_root` work too.

Only the small text columns are held in memory; image bytes are read per row from their row group
(a small per-file cache keeps sequential reads cheap), so a 3 GB shard set is fine.
"""

import ast
import glob
import json
import os
import re
import threading

from vrft_jax.data.example import DataError, Example

_BOX = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_CATEGORY = re.compile(r"category '(.*?)'")


def parse_solution(problem: str, solution: str) -> dict:
    """Task and structured ground truth from a row's texts (Example fields as a dict)."""
    match = _ANSWER.search(solution)
    answer = (match.group(1) if match else solution).strip()
    category = _CATEGORY.search(problem)
    if "Position" in answer or answer == "No Objects":
        boxes = ()
        if answer != "No Objects":
            try:
                items = ast.literal_eval(answer)
            except (ValueError, SyntaxError) as e:
                raise DataError(f"detection solution does not parse: {solution!r}") from e
            boxes = tuple(tuple(int(v) for v in item["Position"]) for item in items)
        return {
            "task": "detection",
            "boxes": boxes,
            "category": category.group(1) if category else "",
        }
    box = _BOX.search(answer)
    if box:
        return {"task": "grounding", "boxes": (tuple(int(v) for v in box.groups()),)}
    return {"task": "classification", "class_name": answer}


def _expand(path: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(
            glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True)
            + glob.glob(os.path.join(path, "**", "*.jsonl"), recursive=True)
        )
    else:
        files = sorted(glob.glob(path))
    if not files:
        raise DataError(f"config.data.path={path!r}: no parquet or jsonl files found")
    return files


class _ParquetFile:
    """Reads one row's image struct; caches the last row group read per thread."""

    def __init__(self, path: str):
        import pyarrow.parquet as pq

        self.path = path
        self._local = threading.local()
        meta = pq.ParquetFile(path).metadata
        self.group_starts = []
        start = 0
        for g in range(meta.num_row_groups):
            self.group_starts.append(start)
            start += meta.row_group(g).num_rows

    def read_texts(self) -> dict:
        import pyarrow.parquet as pq

        names = pq.ParquetFile(self.path).schema_arrow.names
        missing = {"image", "problem", "solution"} - set(names)
        if missing:
            raise DataError(f"{self.path}: missing column(s) {sorted(missing)}; has {names}")
        return pq.read_table(self.path, columns=["problem", "solution"]).to_pydict()

    def image(self, row: int):
        import bisect

        import pyarrow.parquet as pq

        group = bisect.bisect_right(self.group_starts, row) - 1
        cache = getattr(self._local, "cache", None)
        if cache is None or cache[0] != group:
            if not hasattr(self._local, "file"):
                self._local.file = pq.ParquetFile(self.path)
            column = self._local.file.read_row_group(group, columns=["image"]).column("image")
            cache = (group, column.to_pylist())
            self._local.cache = cache
        value = cache[1][row - self.group_starts[group]]
        if isinstance(value, dict):  # HF Image feature: {"bytes": ..., "path": ...}
            return value.get("bytes") or value.get("path")
        return value


class Rows:
    """Random-access rows. path: a parquet/jsonl file, a glob, or a folder of them."""

    def __init__(self, path: str, image_root: str = ""):
        self.image_root = image_root
        self._rows = []  # (problem, solution, image getter or path, row name)
        for file in _expand(path):
            if file.endswith(".parquet"):
                self._add_parquet(file)
            else:
                self._add_json(file)

    def _add_parquet(self, file):
        pf = _ParquetFile(file)
        texts = pf.read_texts()
        for i, (problem, solution) in enumerate(zip(texts["problem"], texts["solution"])):
            self._rows.append((problem, solution, (pf, i), f"{file}#{i}"))

    def _add_json(self, file):
        with open(file, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        for i, record in enumerate(records):
            image = record.get("image", record.get("image_path"))
            if image is None or "problem" not in record or "solution" not in record:
                raise DataError(f"{file} row {i}: needs image (or image_path), problem, solution")
            if isinstance(image, str) and self.image_root and not os.path.isabs(image):
                image = os.path.join(self.image_root, image)
            self._rows.append((record["problem"], record["solution"], image, f"{file}#{i}"))

    def __len__(self) -> int:
        return len(self._rows)

    def task_at(self, index: int) -> str:
        """The task of a row from its texts alone (no image read)."""
        problem, solution = self._rows[index][:2]
        return parse_solution(problem, solution)["task"]

    def __getitem__(self, index: int) -> Example:
        problem, solution, image, name = self._rows[index]
        path = name
        if isinstance(image, tuple):  # a parquet row: read lazily (in the pipeline's workers)
            pf, row = image
            image = pf.image(row)
            if isinstance(image, str):  # a path stored instead of bytes
                image = path = os.path.join(self.image_root, image) if self.image_root else image
        elif isinstance(image, str):
            path = image
        return Example(
            image=image,
            problem=problem,
            solution=solution,
            example_id=name,
            image_id=name,
            image_path=path,
            **parse_solution(problem, solution),
        )
