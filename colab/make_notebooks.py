r"""Writes the Colab notebooks colab/*.ipynb (without outputs) from colab/src/*.py.

Edit the sources in colab/src/, then run `python colab/make_notebooks.py`. tests/test_notebooks.py
checks that the committed notebooks equal what this script writes, and executes each one on the
tiny model.

Source format (one cell per marker line, in the spirit of jupytext's "percent" files, so ruff
checks and formats the code):
  # %%                  a code cell
  # %% parameters       the code cell tagged "parameters" (tests insert smaller settings after it)
  # %% [markdown]       a markdown cell; its lines are comments ("# text")
A first line `# ruff: noqa...` is dropped.
"""

import os
import sys

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "src")

NOTEBOOKS = {
    "01_inference.ipynb": "01_inference.py",
    "02_rewards_playground.ipynb": "02_rewards_playground.py",
    "03_grpo_short_run.ipynb": "03_grpo_short_run.py",
}


def _read(name: str) -> str:
    with open(os.path.join(SRC, name), encoding="utf-8") as f:
        return f.read()


def parse_cells(text: str) -> list[nbformat.NotebookNode]:
    """Cells from one source file (format in the module docstring)."""
    cells, header, lines = [], None, []

    def flush():
        if header is None:
            return
        body = "\n".join(lines).strip("\n")
        if header == "[markdown]":
            md = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
            cells.append(nbformat.v4.new_markdown_cell("\n".join(md).strip("\n")))
        else:
            cell = nbformat.v4.new_code_cell(body)
            if header == "parameters":
                cell.metadata["tags"] = ["parameters"]
            elif header:
                raise ValueError(f"unknown cell marker '# %% {header}'")
            cells.append(cell)

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            header, lines = line[4:].strip(), []
        elif header is not None:
            lines.append(line)
        elif line.strip() and not line.startswith("# ruff:"):
            raise ValueError(f"text before the first '# %%' marker: {line!r}")
    flush()
    return cells


def build(source_name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    nb.cells = parse_cells(_read(source_name))
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
    return nb


def render(name: str) -> str:
    """The .ipynb text of notebook `name` (a key of NOTEBOOKS)."""
    return nbformat.writes(build(NOTEBOOKS[name])) + "\n"


def main(argv):
    names = argv[1:] or list(NOTEBOOKS)
    for name in names:
        path = os.path.join(HERE, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(name))
        print("wrote", path)


if __name__ == "__main__":
    main(sys.argv)
