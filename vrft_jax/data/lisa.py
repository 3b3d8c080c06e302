"""LISA / ReasonSeg reasoning grounding: polygons -> one box in 0..1000 ints.

ReasonSeg ships `<split>/<name>.jpg` with `<name>.json` holding {"text": [instructions],
"is_sentence": bool, "shapes": [{"label", "points": [[x, y], ...]}, ...]}. As the reference's
gen_box_ann.py does, the box is the min/max of the first polygon; gen_sft.py's one example per
instruction sentence is kept.
"""

import functools
import glob
import os

from PIL import Image

from vrft_jax.data import templates
from vrft_jax.data.example import DataError, Example, grounding_solution, to_thousandths
from vrft_jax.jsonio import read_json


def polygon_box(points) -> tuple[float, float, float, float]:
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


class LisaGrounding:
    def __init__(self, folder: str, max_examples: int = 0):
        files = sorted(glob.glob(os.path.join(folder, "*.json")))
        if not files:
            raise DataError(f"config.data.path={folder!r}: no ReasonSeg *.json files")
        self.items = []  # (json file, instruction index, instruction)
        self._meta = {}
        for file in files:
            record = read_json(file, DataError)
            if not isinstance(record, dict) or not record.get("shapes") or not record.get("text"):
                raise DataError(f"{file} field shapes/text: needs non-empty 'shapes' and 'text'")
            texts = record["text"] if isinstance(record["text"], list) else [record["text"]]
            try:
                box = polygon_box(record["shapes"][0]["points"])
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise DataError(
                    f"{file} field shapes[0].points: not a list of [x, y] numbers ({e})"
                ) from e
            self._meta[file] = (box, record)
            self.items.extend((file, k, t) for k, t in enumerate(texts))
        if max_examples:
            self.items = self.items[:max_examples]
        self.data_files = files  # the validation cache key

    def __len__(self) -> int:
        return len(self.items)

    def row_key(self, index: int) -> str:
        file, k, _ = self.items[index]
        return f"{os.path.basename(file)}#{k}"

    def row_where(self, index: int) -> str:
        file, k, _ = self.items[index]
        return f"{file} instruction {k}"

    def __getitem__(self, index: int) -> Example:
        file, k, instruction = self.items[index]
        pixel_box, record = self._meta[file]
        path = os.path.splitext(file)[0] + ".jpg"
        common = dict(
            problem=templates.grounding_problem(instruction),
            task="grounding",
            example_id=f"{os.path.basename(file)}#{k}",
            image_id=os.path.basename(path),
            image_path=path,
        )
        if "imageWidth" in record and "imageHeight" in record:
            size = (int(record["imageWidth"]), int(record["imageHeight"]))
        else:
            try:  # reads the header only
                with Image.open(path) as im:
                    size = im.size
            except OSError as e:
                # No size, no 0..1000 box: loading this example raises, so the pipeline counts
                # it as a bad image (config.data.max_bad_fraction) like every other source's.
                reason = f"cannot read its size for the ground-truth box ({e})"
                bad = functools.partial(_raise_bad_image, path, reason)
                return Example(image=bad, solution="", **common)
        box = to_thousandths(pixel_box, *size)
        return Example(
            image=path,
            solution=grounding_solution(box),
            image_size=size,
            boxes=(box,),
            pixel_boxes=(pixel_box,),
            **common,
        )


def _raise_bad_image(path: str, reason: str):
    raise OSError(f"{path}: {reason}")
