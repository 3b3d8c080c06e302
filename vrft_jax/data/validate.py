"""Up-front data validation: every row of the train and eval sources checked before any model work.

`validate_data(config, workdir)` builds the sources the run will read (`make_source`, eval without
its `num_eval_examples` cap) and checks each row in a thread pool, with a progress bar:

- the row itself reads (a JSON line parses, the fields exist, the solution parses: detection
  boxes are four finite numbers, a grounding box exists, a classification answer is not empty);
- its image header reads (`PIL.Image.open` + `verify()`: format, size and, for PNG, chunk CRCs;
  no full decode, so a JPEG truncated mid-scan is still only found when the pipeline decodes it).

Bad rows of any kind count against `config.data.max_bad_fraction` over the whole data set (the
distinct rows of train and eval together). Above the limit: DataError with a one-line message
naming the first bad row's file, row and field. At or below it: the bad rows are logged (count
and the first few) and dropped, since `make_source` leaves out every row registered here.

Cache: `<workdir>/data_validation.json` maps a key of (the source's data files with size and
mtime, the data config, the seed, this module's VERSION) to the bad rows found, so a restart in
the same workdir skips the pass. Image files are not part of the key (stat'ing every image would
cost about what the check does): an image replaced later is still caught, and counted, when the
pipeline decodes it. Delete the file to force a new pass.
"""

import concurrent.futures
import hashlib
import io
import json
import logging
import os
import threading

from PIL import Image
from tqdm import tqdm

from vrft_jax.data.example import DataError, Example
from vrft_jax.rewards.parsing import (
    SolutionError,
    parse_detection_solution,
    parse_grounding_solution,
    solution_answer,
)

log = logging.getLogger(__name__)

CACHE_FILE = "data_validation.json"
VERSION = 1  # bump when the checks change, so old cache entries are not trusted
CHUNK = 256  # rows per pool task (contiguous, so parquet row groups are read once per chunk)
SHOWN = 5  # bad rows listed in the report

# Row keys found bad by `validate_data` in this process; `make_source` leaves them out.
_dropped: set[str] = set()
_lock = threading.Lock()


def dropped_rows() -> frozenset:
    return frozenset(_dropped)


def register_dropped(keys) -> None:
    with _lock:
        _dropped.update(keys)


def clear_dropped() -> None:
    with _lock:
        _dropped.clear()


def row_key(source, index: int) -> str:
    """A row's identity, stable across seeds and roles (the example id), read without I/O where
    the source can."""
    if hasattr(source, "row_key"):
        return source.row_key(index)
    return str(source[index].example_id)


# ---- One row -------------------------------------------------------------------------------------


def check_row(source, index: int) -> str | None:
    """None if row `index` of `source` is usable, else one line naming its file, row and field."""
    where = source.row_where(index) if hasattr(source, "row_where") else f"example {index}"
    try:
        example = source[index]
    except DataError as e:
        return str(e)
    except Exception as e:  # a library error reading the row (pyarrow, a decoder): name the row
        return f"{where}: {type(e).__name__}: {e}"
    # Rows parse their solutions strictly when read; other sources build theirs from checked boxes
    # (parsed again here as a safety net, cheap next to the image header).
    strict = getattr(source, "parses_solutions_strictly", False)
    return (None if strict else check_solution(example, where)) or check_image(example, where)


def check_solution(example: Example, where: str) -> str | None:
    answer = solution_answer(example.solution)
    try:
        if example.task == "detection":
            parse_detection_solution(answer)
        elif example.task == "grounding":
            parse_grounding_solution(answer)
        elif not answer:
            raise SolutionError("empty answer")
    except SolutionError as e:
        return f"{where} field solution: {e}"
    return None


def check_image(example: Example, where: str) -> str | None:
    """Reads the image header (no full decode) of a path or encoded bytes; arrays pass."""
    image = example.image
    try:
        if callable(image) and not isinstance(image, Image.Image):
            image = image()
        if isinstance(image, str | os.PathLike):
            if not os.path.exists(image):
                return f"{where} field image: file not found: {image}"
            opened = Image.open(image)
        elif isinstance(image, bytes | bytearray):
            opened = Image.open(io.BytesIO(image))
        else:
            return None  # a decoded image or an array (synthetic data) has nothing to read
        with opened:
            size = opened.size
            opened.verify()
        if min(size) <= 0:
            return f"{where} field image: empty image {size}"
    except Exception as e:  # PIL raises several types (OSError, SyntaxError, ValueError, ...)
        name = f" {image}" if isinstance(image, str) and image not in str(e) else ""
        return f"{where} field image{name}: {type(e).__name__}: {e}"
    return None


# ---- A whole source ------------------------------------------------------------------------------


def check_source(
    source, *, name: str, num_threads: int, known: dict | None = None
) -> list[tuple[str, str]]:
    """(row key, problem) for every bad row of `source`, in row order; a progress bar per source.

    known: row key -> problem (None = good) of rows already checked in this pass (the eval rows are
    often the train rows); filled with this source's results.
    """
    n = len(source)
    known = {} if known is None else known

    def check_chunk(start):
        out = []
        for i in range(start, min(start + CHUNK, n)):
            key = row_key(source, i)
            problem = known[key] if key in known else check_row(source, i)
            known[key] = problem
            if problem is not None:
                out.append((i, key, problem))
        return out

    bad = []
    bar = tqdm(total=n, desc=f"validating {name} data", unit="row", mininterval=1.0)
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        for start, found in zip(range(0, n, CHUNK), pool.map(check_chunk, range(0, n, CHUNK))):
            bad.extend(found)
            bar.update(min(CHUNK, n - start))
    bar.close()
    return [(key, problem) for _, key, problem in sorted(bad)]


def _cache_key(source, data, role: str, seed: int, gate: str) -> str:
    files = []
    for path in getattr(source, "data_files", ()):
        stat = os.stat(path)
        files.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
    settings = {k: v for k, v in data.to_dict().items() if k not in ("num_workers",)}
    settings.pop("max_bad_fraction", None)  # the limit is applied to the cached result
    blob = json.dumps(
        [VERSION, role, seed, gate, len(source), settings, files], sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_cache(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            cache = json.load(f)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):  # absent or unreadable: validate again
        return {}


def _write_cache(path: str, cache: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(cache, f, indent=1)
    os.replace(tmp, path)  # atomic: a crash never leaves half a file


def validate_data(config, workdir: str | None, *, write_cache: bool = True) -> dict:
    """Checks the train and eval sources of `config`; drops bad rows or raises DataError.

    Returns {"rows": distinct rows checked, "bad": [(key, problem), ...], "cached": bool}.
    Synthetic data (drawn in memory) is not checked.
    """
    from vrft_jax.data.factory import make_source

    data = config.data
    if data.source == "synthetic":
        return {"rows": 0, "bad": [], "cached": True}
    cache_path = os.path.join(workdir, CACHE_FILE) if workdir else None
    cache = _read_cache(cache_path) if cache_path else {}
    threads = max(data.num_workers, min(32, os.cpu_count() or 1))
    gate = config.eval.detection_gate
    all_keys, bad, known, entries = set(), {}, {}, {}
    for role in ("train", "eval"):
        source = make_source(data, role, config.seed, detection_gate=gate, cap=False, drop=False)
        key = _cache_key(source, data, role, config.seed, gate)
        if key in cache:
            found = [tuple(item) for item in cache[key]["bad"]]
        else:
            found = check_source(source, name=role, num_threads=threads, known=known)
        entries[key] = {"rows": len(source), "bad": [list(item) for item in found]}
        all_keys.update(row_key(source, i) for i in range(len(source)))
        bad.update(found)
    cached = all(key in cache for key in entries)
    if cache_path and write_cache and entries != cache:  # only this config's entries are kept
        _write_cache(cache_path, entries)
    enforce_limit(bad, len(all_keys), data.max_bad_fraction)
    register_dropped(bad)
    return {"rows": len(all_keys), "bad": list(bad.items()), "cached": cached}


def enforce_limit(bad: dict, total: int, max_bad_fraction: float) -> None:
    """Raises DataError (one line) when len(bad) > max_bad_fraction * total; else logs the drops."""
    if not bad:
        return
    first = next(iter(bad.values()))
    if len(bad) > max_bad_fraction * total:
        raise DataError(
            f"{len(bad)} of {total} rows are bad ({len(bad) / total:.2%}), more than "
            f"data.max_bad_fraction={max_bad_fraction}; first: {first}"
        )
    shown = "\n  ".join(list(bad.values())[:SHOWN])
    more = f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    message = f"dropping {len(bad)} bad rows of {total} (data.max_bad_fraction={max_bad_fraction})"
    log.warning("%s:\n  %s%s", message, shown, more)
