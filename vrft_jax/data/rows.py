"""Visual-RFT's published rows (`image`, `problem`, `solution`) from parquet or JSON lines.

Hugging Face hosts the ViRFT data sets as parquet shards whose `image` column is a struct
{"bytes": ..., "path": ...}. The reference reads them with `load_from_disk`, which only works on
`save_to_disk` output; here the parquet files are read directly with pyarrow. JSON lines (or a
JSON list) with `image` / `image_path` holding a path relative to `image_root` work too.

Only the small text columns are held in memory; image bytes are read per row from their row group
(a small per-file cache keeps sequential reads cheap), so a 3 GB shard set is fine.
"""

import glob
import json
import os
import re
import threading
from typing import NamedTuple

from vrft_jax.data.example import DataError, Example
from vrft_jax.rewards.parsing import (
    SolutionError,
    parse_detection_solution,
    parse_grounding_solution,
)

_BOX = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_CATEGORY = re.compile(r"category '(.*?)'")
_NO_OBJECTS = re.compile(r"\s*no\s*objects?\s*", re.IGNORECASE)


def parse_solution(problem: str, solution: str) -> dict:
    """Task and structured ground truth from a row's texts (Example fields as a dict).

    Raises SolutionError (a ValueError) for a solution that cannot be read: a detection box that
    is not four finite numbers, an empty classification answer, a non-string solution.
    """
    if not isinstance(solution, str):
        raise SolutionError(f"expected a string, got {type(solution).__name__}")
    match = _ANSWER.search(solution)
    answer = (match.group(1) if match else solution).strip()
    category = _CATEGORY.search(problem) if isinstance(problem, str) else None
    if "position" in answer.lower() or _NO_OBJECTS.fullmatch(answer):
        boxes = tuple(tuple(int(v) for v in box) for box in parse_detection_solution(answer))
        return {
            "task": "detection",
            "boxes": boxes,
            "category": category.group(1) if category else "",
        }
    if _BOX.search(answer):
        return {
            "task": "grounding",
            "boxes": (tuple(int(v) for v in parse_grounding_solution(answer)),),
        }
    if not answer:
        raise SolutionError("empty answer")
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


class _Row(NamedTuple):
    problem: str | None
    solution: str | None
    image: object  # a path, bytes, or (parquet file, row) read lazily
    name: str  # example id, "file#i"
    where: str  # for errors: "file line N" (JSONL, 1-based) or "file row N" (parquet, JSON list)
    error: str = ""  # why the row cannot be read (a bad JSON line, a missing field)


class Rows:
    """Random-access rows. path: a parquet/jsonl file, a glob, or a folder of them.

    A row that cannot be read (a bad JSON line, a missing field, a solution that does not parse)
    raises DataError naming its file, line/row and field only when it is accessed, so the
    validation pass (`vrft_jax.data.validate`) can count it against `data.max_bad_fraction` and
    drop it; a file that cannot be read at all fails here.
    """

    parses_solutions_strictly = True  # __getitem__ raises for a bad solution (see validate.py)

    def __init__(self, path: str, image_root: str = ""):
        self.image_root = image_root
        self.files = self.data_files = _expand(path)  # data_files: the validation cache key
        self._rows: list[_Row] = []
        for file in self.files:
            if file.endswith(".parquet"):
                self._add_parquet(file)
            else:
                self._add_json(file)

    def _add_parquet(self, file):
        try:
            pf = _ParquetFile(file)
            texts = pf.read_texts()
        except DataError:
            raise
        except Exception as e:  # pyarrow's ArrowInvalid, OSError: a truncated or foreign file
            raise DataError(f"{file}: cannot read parquet: {type(e).__name__}: {e}") from e
        for i, (problem, solution) in enumerate(zip(texts["problem"], texts["solution"])):
            self._rows.append(_Row(problem, solution, (pf, i), f"{file}#{i}", f"{file} row {i}"))

    def _add_json(self, file):
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{file}: cannot read: {e}") from e
        if text.lstrip().startswith("["):
            try:
                records = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{file} line {e.lineno} column {e.colno}: not valid JSON ({e.msg})"
                ) from e
            numbered = [(i, f"row {i}", r) for i, r in enumerate(records)]
        else:
            numbered = [
                (n, f"line {n}", line)
                for n, line in enumerate(text.splitlines(), 1)
                if line.strip()
            ]
        for i, (_, place, record) in enumerate(numbered):
            name, where = f"{file}#{i}", f"{file} {place}"
            if isinstance(record, str):  # a JSONL line
                try:
                    record = json.loads(record)
                except json.JSONDecodeError as e:
                    error = f"not valid JSON ({e.msg} at column {e.colno})"
                    self._rows.append(_Row(None, None, None, name, where, error))
                    continue
            self._rows.append(self._json_row(record, name, where))

    def _json_row(self, record, name: str, where: str) -> _Row:
        if not isinstance(record, dict):
            return _Row(None, None, None, name, where, "expected a JSON object")
        image = record.get("image", record.get("image_path"))
        missing = [k for k in ("problem", "solution") if not isinstance(record.get(k), str)]
        if image is None:
            missing.insert(0, "image")
        if missing:
            return _Row(None, None, None, name, where, f"field {missing[0]}: missing or not text")
        if isinstance(image, str) and self.image_root and not os.path.isabs(image):
            image = os.path.join(self.image_root, image)
        return _Row(record["problem"], record["solution"], image, name, where)

    def __len__(self) -> int:
        return len(self._rows)

    def row_key(self, index: int) -> str:
        """The row's example id, without reading or parsing it."""
        return self._rows[index].name

    def row_where(self, index: int) -> str:
        return self._rows[index].where

    def _parsed(self, index: int) -> tuple[_Row, dict]:
        row = self._rows[index]
        if row.error:
            raise DataError(f"{row.where}: {row.error}")
        try:
            return row, parse_solution(row.problem, row.solution)
        except SolutionError as e:
            raise DataError(f"{row.where} field solution: {e}") from e

    def task_at(self, index: int) -> str:
        """The task of a row from its texts alone (no image read)."""
        return self._parsed(index)[1]["task"]

    def __getitem__(self, index: int) -> Example:
        row, fields = self._parsed(index)
        image, path = row.image, row.where
        if isinstance(image, tuple):  # a parquet row: read lazily (in the pipeline's workers)
            pf, i = image
            try:
                image = pf.image(i)
            except Exception as e:  # pyarrow errors on a damaged row group
                raise DataError(f"{row.where} field image: {type(e).__name__}: {e}") from e
            if isinstance(image, str):  # a path stored instead of bytes
                image = path = os.path.join(self.image_root, image) if self.image_root else image
        elif isinstance(image, str):
            path = image
        return Example(
            image=image,
            problem=row.problem,
            solution=row.solution,
            example_id=row.name,
            image_id=row.name,
            image_path=path,
            **fields,
        )
