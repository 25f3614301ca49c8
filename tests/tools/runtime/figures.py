"""Reading a saved figure's words in a test (see the `saved_figures` fixture)."""

from __future__ import annotations


def texts(fig) -> str:
    """Every title, label, legend entry and free text of the figure, one string."""
    parts = [t.get_text() for t in fig.texts]
    parts += [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    if fig._suptitle is not None:
        parts.append(fig._suptitle.get_text())
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        parts += [t.get_text() for t in ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            parts += [t.get_text() for t in legend.get_texts()]
    return "\n".join(parts)
