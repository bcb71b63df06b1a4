"""Tables of strings -> Markdown and LaTeX (no extra dependency: tabulate/jinja2 not needed)."""

from __future__ import annotations

import pandas as pd

LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
LATEX_SYMBOLS = {"±": r"$\pm$", "Δm": r"$\Delta_m$", "–": "--"}


def _flat(table: pd.DataFrame) -> pd.DataFrame:
    """Index levels become leading columns, so every writer sees plain columns."""
    if isinstance(table.index, pd.MultiIndex) or table.index.name is not None:
        return table.reset_index()
    return table


def to_markdown(table: pd.DataFrame) -> str:
    flat = _flat(table)
    header = [str(c) for c in flat.columns]
    rows = [[str(v) for v in row] for row in flat.itertuples(index=False)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    out = "".join(LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    for symbol, latex in LATEX_SYMBOLS.items():
        out = out.replace(symbol, latex)
    return out


def to_latex(table: pd.DataFrame, caption: str | None = None) -> str:
    """A booktabs ``tabular`` (in a ``table`` float when captioned)."""
    flat = _flat(table)
    spec = "l" * min(2, flat.shape[1]) + "r" * max(0, flat.shape[1] - 2)
    body = [r"\begin{tabular}{" + spec + "}", r"\toprule",
            " & ".join(latex_escape(c) for c in flat.columns) + r" \\", r"\midrule"]
    body += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in flat.itertuples(index=False)]
    body += [r"\bottomrule", r"\end{tabular}"]
    if caption is None:
        return "\n".join(body) + "\n"
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\caption{" + latex_escape(caption) + "}",
                      *body, r"\end{table}"]) + "\n"


def numbers_csv(table: pd.DataFrame) -> str:
    """Numbers with flat column names (``quantity.mean``, ``quantity.std``) for machines."""
    flat = table.copy()
    if isinstance(flat.columns, pd.MultiIndex):
        flat.columns = [f"{a}.{b}" if b else a for a, b in flat.columns]
    return _flat(flat).to_csv(index=False)
