"""Setup shared by every gazeloop picture: a file backend, and text that draws.

Names in pictures are the user's own (people, devices, session folders such as 数据), and
matplotlib's DejaVu Sans has no CJK glyphs: they came out as boxes, with a "Glyph ... missing
from font(s)" warning each. `pyplot()` adds an installed CJK font as a fallback after the
default; `drawable(text)` replaces what no configured font can draw with '?', so a machine
without such a font shows a readable name, not boxes, and warns nothing.
"""

from __future__ import annotations

import functools
import textwrap
import unicodedata

# Fonts that cover CJK, as font_manager names them: macOS first, then the common Linux ones.
CJK_FONTS = (
    "Hiragino Sans",
    "PingFang SC",
    "Arial Unicode MS",
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
)


# Strong, distinct colours, one per series (tab20's pale halves vanish on white, and its
# pairs make neighbours look alike): tab10 without its grey, then three more.
STRONG = (
    *("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"),
    *("#8c564b", "#e377c2", "#bcbd22", "#17becf"),
    *("#000080", "#b8860b", "#c000c0"),
)


def strong_colours(reserved: tuple[str, ...] = ()) -> tuple[str, ...]:
    """`STRONG` without the colours a picture reserves for something else (a marker)."""
    return tuple(c for c in STRONG if c not in reserved)


def pyplot():
    """`matplotlib.pyplot` with the Agg backend (pictures go to files; no display is needed)
    and a CJK fallback font when one is installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(matplotlib.rcParams["font.family"])
    extra = [f for f in installed_cjk_fonts() if f not in families]
    if extra:
        matplotlib.rcParams["font.family"] = families + extra
    return plt


@functools.cache
def installed_cjk_fonts() -> tuple[str, ...]:
    """The names in CJK_FONTS that font_manager finds: naming one it lacks would warn
    "findfont: Font family ... not found" on every text drawn."""
    from matplotlib import font_manager

    have = {f.name for f in font_manager.fontManager.ttflist}
    return tuple(name for name in CJK_FONTS if name in have)


def drawable(text: str) -> str:
    """`text` with every character that the configured fonts cannot draw replaced by '?'."""
    chars = _drawable_chars(_families())
    return "".join(c if ord(c) in chars or c in "\n\t" else "?" for c in text)


def wrap(text: str, width: int) -> str:
    """`textwrap.fill` for a title, each line no wider than `width` Latin characters: a
    CJK character takes the room of two."""
    wide = sum(unicodedata.east_asian_width(c) in "WF" for c in text)
    if not wide:
        return textwrap.fill(text, width)
    return textwrap.fill(text, max(10, int(width * len(text) / (len(text) + wide))))


def _families() -> tuple[str, ...]:
    import matplotlib

    return tuple(matplotlib.rcParams["font.family"])


@functools.cache
def _drawable_chars(families: tuple[str, ...]) -> frozenset[int]:
    from matplotlib import font_manager, ft2font

    chars: set[int] = set()
    for family in families:
        path = font_manager.findfont(font_manager.FontProperties(family=[family]))
        chars.update(ft2font.FT2Font(path).get_charmap())
    return frozenset(chars)
