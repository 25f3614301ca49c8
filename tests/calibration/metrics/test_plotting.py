"""Text in pictures draws: a CJK fallback font when one is installed, '?' for what no font
has (never a box, never a "Glyph ... missing" warning)."""

from __future__ import annotations

import matplotlib
import pytest
from matplotlib import font_manager

from gazeloop.calibration.metrics import plotting


@pytest.fixture
def fonts_named(monkeypatch):
    """font_manager's list of installed fonts replaced by fonts of the given names."""

    def install(*names):
        fake = [font_manager.FontEntry(fname=f"/nowhere/{n}.ttf", name=n) for n in names]
        monkeypatch.setattr(font_manager.fontManager, "ttflist", fake)
        plotting.installed_cjk_fonts.cache_clear()

    yield install
    plotting.installed_cjk_fonts.cache_clear()


def test_only_cjk_fonts_that_are_installed_are_chosen_in_preference_order(fonts_named):
    fonts_named("DejaVu Sans", "WenQuanYi Zen Hei", "Hiragino Sans")
    assert plotting.installed_cjk_fonts() == ("Hiragino Sans", "WenQuanYi Zen Hei")
    fonts_named("DejaVu Sans")
    assert plotting.installed_cjk_fonts() == ()


def test_an_installed_cjk_font_falls_back_after_the_default_once(monkeypatch):
    # a real font stands in for the CJK one this machine may lack: it must be found
    monkeypatch.setattr(plotting, "installed_cjk_fonts", lambda: ("DejaVu Serif",))
    with matplotlib.rc_context({"font.family": ["sans-serif"]}):
        plotting.pyplot()
        plotting.pyplot()
        assert matplotlib.rcParams["font.family"] == ["sans-serif", "DejaVu Serif"]


def test_what_no_font_draws_becomes_a_question_mark():
    plotting.pyplot()
    name = "数据/王小明 p1_s00 ° → é"
    if plotting.installed_cjk_fonts():
        assert plotting.drawable(name) == name
    else:
        assert plotting.drawable(name) == "??/??? p1_s00 ° → é"
    assert plotting.drawable("a\nb") == "a\nb"


def test_a_wide_title_wraps_in_fewer_characters():
    def columns(line: str) -> int:  # a CJK character is as wide as two Latin ones
        return len(line) + sum(c in "数据" for c in line)

    for text in ("word " * 40, "数据 " * 40):
        lines = plotting.wrap(text, 50).splitlines()
        assert len(lines) > 1 and max(map(columns, lines)) <= 50, lines
