r"""Cost of the up-front data validation pass (`vrft_jax.data.validate`) and of a restart.

Writes a JSON-lines data set of `--rows` rows (detection, classification and grounding solutions
in turn) whose images are `--images` small PNG and JPEG files shared by the rows, in a temporary
folder. Every row is checked on its own (its solution parsed, its image header opened and
verified), so sharing files only keeps the folder small. Then runs `validate_data` twice on one
workdir: the first pass checks every row, the second (a restart) finds the cache and skips it.

  python bench/validate_data.py [--rows 100000] [--images 500] [--threads 0 (= cpu count)]

Measured (2026-12-02, this project's shared 2-core CPU machine at load average ~17, so slower than
an idle one; threads = max(data.num_workers, cpu count) = 2; 100,000 rows, 500 images of ~64x48 px):
  first pass: 35.4 s = 2,825 rows/s (GIL-bound: PIL's header parsers are Python; profile of one
    thread: ~60% PIL open + verify, ~20% solution parsing, the rest the row reads)
  restart: 5.6 s, cache hit, no row read; ~4.5 s of it is reading the 100,000-line JSONL into
    the train and eval sources (which the run does anyway), ~0.3 s listing the row keys
"""

import argparse
import json
import os
import tempfile
import time


def make_data(folder: str, rows: int, images: int) -> str:
    """rows.jsonl with `rows` rows over `images` image files; returns the JSONL path."""
    from PIL import Image

    names = []
    for k in range(images):
        name = f"img{k:05d}.{'png' if k % 2 else 'jpg'}"
        colour = (k * 37 % 256, k * 91 % 256, k * 53 % 256)
        Image.new("RGB", (64 + k % 7, 48 + k % 5), colour).save(os.path.join(folder, name))
        names.append(name)
    solutions = (
        "<answer>[{'Position': [64, 0, 950, 411], 'Confidence': 1}, "
        "{'Position': [10, 20, 300, 400], 'Confidence': 1}]</answer>",
        "<answer>daisy</answer>",
        "<answer> (120,40),(560,610) </answer>",
    )
    problem = "Detect all objects belonging to the category 'bus' in the image."
    path = os.path.join(folder, "rows.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            row = {"image": names[i % images], "problem": problem, "solution": solutions[i % 3]}
            f.write(json.dumps(row) + "\n")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=0, help="data.num_workers (0 = default)")
    args = parser.parse_args()

    from vrft_jax import config_utils
    from vrft_jax.data import validate

    base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "base.py")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = make_data(tmp, args.rows, args.images)
        made_s = time.perf_counter() - t0
        config = config_utils.load_config_file(base)
        config.data.source, config.data.path, config.data.image_root = "rows", path, tmp
        if args.threads:
            config.data.num_workers = args.threads
        workdir = os.path.join(tmp, "workdir")
        timings = []
        for _ in range(2):  # a first run, then a restart on the same workdir
            validate.clear_dropped()
            t0 = time.perf_counter()
            report = validate.validate_data(config, workdir)
            timings.append((time.perf_counter() - t0, report["cached"], len(report["bad"])))
        (first_s, first_cached, bad), (second_s, second_cached, _) = timings
        print(
            json.dumps(
                {
                    "rows": report["rows"],
                    "images": args.images,
                    "threads": max(config.data.num_workers, min(32, os.cpu_count() or 1)),
                    "generate_s": round(made_s, 2),
                    "first_pass_s": round(first_s, 2),
                    "rows_per_s": round(report["rows"] / first_s),
                    "first_pass_cached": first_cached,
                    "bad_rows": bad,
                    "restart_s": round(second_s, 2),
                    "restart_cached": second_cached,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
