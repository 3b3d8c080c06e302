"""Host pipeline: determinism per seed, host sharding, resumable state, bad images."""

import json
import logging

import pytest
from PIL import Image

from vrft_jax.data import DataError, Pipeline
from vrft_jax.data.rows import Rows
from vrft_jax.data.synthetic import SyntheticShapes


def _ids(batches):
    return [e.example_id for batch in batches for e in batch]


def _pipeline(source, **kwargs):
    defaults = dict(batch_size=4, seed=3, num_workers=2, process_index=0, process_count=1)
    return Pipeline(source, **{**defaults, **kwargs})


def test_shuffle_deterministic_and_epoch_complete():
    source = SyntheticShapes("classification", "eval", seed=0, size=32, length=20)
    first = _ids(_pipeline(source))
    assert first == _ids(_pipeline(source))
    assert sorted(first) == sorted(source[i].example_id for i in range(20))
    assert first != _ids(_pipeline(source, seed=4))
    in_order = _ids(_pipeline(source, seed=None))
    assert in_order == [source[i].example_id for i in range(20)]
    batch = next(iter(_pipeline(source)))
    assert len(batch) == 4 and batch[0].image.mode == "RGB" and batch[0].image_size == (32, 32)


def test_hosts_get_disjoint_slices_that_cover_the_data():
    source = SyntheticShapes("classification", "eval", seed=0, size=32, length=21)
    hosts = [_ids(_pipeline(source, process_index=h, process_count=3)) for h in range(3)]
    assert [len(h) for h in hosts] == [7, 7, 7]
    assert sorted(sum(hosts, [])) == sorted(source[i].example_id for i in range(21))


def test_iterator_state_restores_position_across_epochs():
    source = SyntheticShapes("detection", "eval", seed=0, size=32, length=10)
    pipeline = _pipeline(source, num_epochs=None)
    it = iter(pipeline)
    for _ in range(4):  # past the first epoch of 10 examples
        next(it)
    state = it.get_state()
    expected = _ids([next(it) for _ in range(3)])
    resumed = iter(_pipeline(source, num_epochs=None))
    resumed.set_state(json.loads(json.dumps(state)))  # the state survives a JSON round trip
    assert _ids([next(resumed) for _ in range(3)]) == expected


def _bad_folder(tmp_path, num_good=18):
    """Rows pointing at good, corrupt (truncated, garbage) and missing images."""
    rows = []
    for k in range(num_good):
        Image.new("RGB", (16, 16), (k * 10, 0, 0)).save(tmp_path / f"good{k}.png")
        rows.append(f"good{k}.png")
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    good = (tmp_path / "good0.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    rows += ["garbage.jpg", "truncated.png", "missing.jpg"]
    with open(tmp_path / "rows.jsonl", "w") as f:
        for name in rows:
            f.write(json.dumps({"image": name, "problem": "p", "solution": "<answer>x</answer>"}))
            f.write("\n")
    return Rows(str(tmp_path / "rows.jsonl"), image_root=str(tmp_path))


def test_bad_images_are_skipped_counted_and_logged(tmp_path, caplog):
    source = _bad_folder(tmp_path)
    pipeline = _pipeline(source, max_bad_fraction=0.2)  # 3 of 21 allowed
    with caplog.at_level(logging.WARNING, logger="vrft_jax.data.pipeline"):
        seen = _ids(pipeline)
    assert len(seen) == 18 and pipeline.bad_images.count == 3
    assert {p.split("/")[-1] for p in pipeline.bad_images.bad} == {
        "garbage.jpg",
        "truncated.png",
        "missing.jpg",
    }
    logged = caplog.text
    assert "missing.jpg" in logged and "garbage.jpg" in logged and "truncated.png" in logged


def test_too_many_bad_images_fail_with_paths(tmp_path):
    source = _bad_folder(tmp_path)
    with pytest.raises(DataError, match="max_bad_fraction=0.1"):  # 3 of 21 > 2.1 allowed
        _ids(_pipeline(source, max_bad_fraction=0.1))


def test_batch_fn_packs_batches_in_the_prefetch_thread():
    import numpy as np

    source = SyntheticShapes("classification", "eval", seed=0, size=16, length=6)

    def pack(batch):
        return {
            "pixels": np.stack([np.asarray(e.image) for e in batch]),
            "labels": np.asarray([e.label for e in batch]),
        }

    packed = list(_pipeline(source, batch_size=4, seed=None, batch_fn=pack))
    assert [b["pixels"].shape for b in packed] == [(4, 16, 16, 3), (2, 16, 16, 3)]
    assert packed[0]["labels"].tolist() == [source[i].label for i in range(4)]
