"""The suite's summary table: each benchmark prints `SUMMARY|...` lines, this gathers them.

    PYTHONPATH=. python bench/summary.py LOG... > summary.md

A line: SUMMARY|figure|ours|transformers|ratio|roofline (empty fields allowed). `row` prints one;
`main` reads the logs in order and writes one markdown table (figure, ours, transformers,
ours/transformers, fraction of the roofline), plus the logs that printed none (a failed step).
"""

import sys

PREFIX = "SUMMARY|"
COLUMNS = ("figure", "ours", "transformers", "ratio", "roofline")


def _fmt(value, unit=""):
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def row(figure, ours, theirs=None, *, unit="", higher_is_better=True, roofline=None):
    """Prints one summary line. ratio = ours / theirs (theirs / ours for times), so > 1 means
    ours is better; roofline is a fraction (0..1) of the hardware limit."""
    ratio = None
    if theirs and ours:
        ratio = ours / theirs if higher_is_better else theirs / ours
    cells = (
        figure,
        _fmt(ours, unit),
        _fmt(theirs, unit),
        "" if ratio is None else f"{ratio:.2f}x",
        "" if roofline is None else f"{100 * roofline:.0f}%",
    )
    print(PREFIX + "|".join(cells), flush=True)


def table(lines):
    """SUMMARY lines -> markdown table lines."""
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for line in lines:
        cells = line[len(PREFIX) :].rstrip("\n").split("|")
        cells += [""] * (len(COLUMNS) - len(cells))
        out.append("| " + " | ".join(cells[: len(COLUMNS)]) + " |")
    return out


def main(paths):
    lines, silent = [], []
    for path in paths:
        with open(path, errors="replace") as f:
            found = [line for line in f if line.startswith(PREFIX)]
        lines += found
        if not found:
            silent.append(path)
    print("\n".join(table(lines)))
    if silent:
        print("\nno figures from: " + ", ".join(silent) + " (see those logs)")


if __name__ == "__main__":
    main(sys.argv[1:])
