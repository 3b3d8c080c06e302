"""The Colab notebooks run top to bottom on the tiny model, so they cannot rot.

Each notebook executes in a fresh python3 kernel (nbclient) from the colab/ folder, with a cell of
smaller settings inserted after its "parameters" cell. The committed .ipynb files must equal what
colab/make_notebooks.py writes, and carry no outputs.
"""

import importlib.util
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, "colab")
CELL_TIMEOUT_S = 600

# Settings the test inserts after each notebook's parameters cell (CI-sized runs).
OVERRIDES = {
    "01_inference.ipynb": "MAX_NEW_TOKENS = 16",
    "02_rewards_playground.ipynb": "",
    "03_grpo_short_run.ipynb": (
        "STEPS = 2\nSFT_WARMUP_STEPS = 0\nG = 2\nMAX_NEW_TOKENS = 16\nNUM_EVAL_EXAMPLES = 8\n"
        "WORKDIR = {workdir!r}"
    ),
}
NEEDS_TRAINER = ("03_grpo_short_run.ipynb",)
# A line each notebook must print, showing its main step ran.
EXPECTED_TEXT = {
    "01_inference.ipynb": "readable:",
    "02_rewards_playground.ipynb": "prediction 0 conf",
    "03_grpo_short_run.ipynb": "steps logged:",
}


def _make_notebooks():
    spec = importlib.util.spec_from_file_location(
        "make_notebooks", os.path.join(COLAB, "make_notebooks.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE = _make_notebooks()


def test_committed_notebooks_match_generator_and_have_no_outputs():
    assert sorted(MAKE.NOTEBOOKS) == sorted(n for n in os.listdir(COLAB) if n.endswith(".ipynb")), (
        "colab/*.ipynb and make_notebooks.NOTEBOOKS differ"
    )
    for name in MAKE.NOTEBOOKS:
        with open(os.path.join(COLAB, name), encoding="utf-8") as f:
            committed = f.read()
        assert committed == MAKE.render(name), f"run python colab/make_notebooks.py ({name})"
        nb = nbformat.reads(committed, as_version=4)
        tags = [c.metadata.get("tags", []) for c in nb.cells]
        assert sum("parameters" in t for t in tags) == 1, name
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name


def _outputs(nb, output_type_filter):
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if output_type_filter(out):
                yield out


@pytest.mark.parametrize("name", sorted(MAKE.NOTEBOOKS))
def test_notebook_runs(name, monkeypatch, tmp_path):
    if name in NEEDS_TRAINER and importlib.util.find_spec("vrft_jax.train") is None:
        pytest.skip("vrft_jax.train is not there yet")
    # The kernel inherits this environment: one CPU device as on a laptop (not the test's 8).
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "")
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    if OVERRIDES[name]:
        overrides = OVERRIDES[name].format(workdir=str(tmp_path / "workdir"))
        nb.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides))
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": COLAB}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    text = "".join(o.get("text", "") for o in _outputs(nb, lambda o: o.output_type == "stream"))
    assert EXPECTED_TEXT[name] in text, text[-2000:]
    images = list(_outputs(nb, lambda o: "image/png" in o.get("data", {})))
    assert images, f"{name} drew no figure"
