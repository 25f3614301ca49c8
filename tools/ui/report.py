"""Small HTML reports a person opens in a browser: a title, short text, tables and the PNGs
beside the page. One style for every command that writes one (eval, demo, calibrate)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path

from gazeloop.calibration.store.atomic import atomic_write_bytes

_STYLE = (
    "body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
    "td,th{padding:2px 10px;text-align:left}th{border-bottom:1px solid #999}"
    "tr:nth-child(even){background:#f3f3f3}img{max-width:100%}"
    ".num{text-align:right;font-variant-numeric:tabular-nums}"
)


def esc(v: object) -> str:
    return html.escape(str(v))


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f'<td class="num">{v:.1f}</td>'
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="num">{v}</td>'
    return f"<td>{esc(v)}</td>"


def table(rows: Iterable[Sequence[object]], header: Sequence[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "\n".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table>{head}\n{body}</table>"


def key_values(d: dict[str, object]) -> str:
    return table([(k, v) for k, v in d.items()])


def image(src: str, alt: str) -> str:
    return f'<img src="{esc(src)}" alt="{esc(alt)}">'


def page(title: str, intro: str, sections: Iterable[tuple[str | None, str]]) -> str:
    """`intro` is plain text; each section is (heading or None, HTML from this module)."""
    parts = [
        f'<!doctype html><meta charset="utf-8"><title>{esc(title)}</title>',
        f"<style>{_STYLE}</style>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{esc(intro)}</p>" if intro else "",
    ]
    for heading, body in sections:
        if heading:
            parts.append(f"<h2>{esc(heading)}</h2>")
        parts.append(body)
    return "\n".join(parts) + "\n"


def write(path: Path, text: str) -> Path:
    atomic_write_bytes(Path(path), text.encode())
    return Path(path)


def per_target_table(report) -> str:
    """The per-target rows of a `calibration.evaluate` report."""
    return table(
        [(t.target, t.label_px[0], t.label_px[1], t.mean_px, t.frames) for t in report.per_target],
        ["target", "x px", "y px", "mean error px", "frames"],
    )


def precision_table(p: dict) -> str:
    """Raw and filtered precision (mean over targets) from `calibration.precision`."""
    units = [u for u in ("px", "mm", "deg") if u in p.get("units", [])]
    rows = [
        (kind, *(f"{p[kind]['mean'][m][u]:.2f}" for m in ("rms_s2s", "std") for u in units))
        for kind in ("raw", "filtered")
        if kind in p
    ]
    return table(rows, ["output", *(f"{m} {u}" for m in ("RMS-S2S", "STD") for u in units)])
