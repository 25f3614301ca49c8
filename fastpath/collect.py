"""Run the fast path over a labelled session: what evaluation and profile fitting start from."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gazeloop.calibration.frames import LabelledFrames
from gazeloop.calibration.mirroring import every_fold_agrees, yaw_follows_x
from gazeloop.calibration.store.session import Rejection, Session, read_session
from gazeloop.fastpath import feature_cache
from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
from gazeloop.fastpath.sources import SessionSource
from gazeloop.fastpath.types import GazeSample


@dataclass(slots=True)
class LabelledSample:
    name: str  # the image file name, for reports
    t_ns: int
    label_px: tuple[float, float]
    target: int  # frames of one target share this id (leave-one-target-out groups)
    sample: GazeSample
    settling: bool = False  # recorded while the eyes were still moving to the target


@dataclass(slots=True)
class Collected:
    session: Session
    samples: list[LabelledSample] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # How the mirroring was decided: the manifest, the caller, or detected from the frames.
    mirror_basis: str = ""
    # When nobody stated the mirroring and both reads were asked for: the other read of the
    # same frames (flipped the other way), so selection can compare the two.
    other: Collected | None = None
    unmirrored: bool = False  # whether these samples come from frames flipped back

    @property
    def frames(self) -> int:
        """Pairs found in the folder, rejected ones included."""
        return len(self.session.items) + len(self.session.rejected)

    def labelled(self, *, settling: bool = False) -> LabelledFrames:
        """The usable frames as one set of columns, in time order; `settling`: with the
        frames recorded while the eyes were still moving to their target."""
        return LabelledFrames.from_samples(ls for ls in self.samples if settling or not ls.settling)


def target_ids(session: Session) -> list[int]:
    """A target id per item: items share one when they share the record's own `target`
    field (importers write it) or a label, rounded to the pixel. A place looked at twice
    under two numbers (a recorder that numbers clicks, not places) is one target: held out
    under one number, the frames under the other sat in the fit at the very same place, and
    leave-one-target-out read 36 px where it reads 74 with the place held out whole."""
    parent: list[int] = []

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple, int] = {}
    for n, it in enumerate(session.items):
        parent.append(n)
        extra = it.record.model_extra or {}
        keys = [("xy", round(it.record.screen_x), round(it.record.screen_y))]
        if isinstance(extra.get("target"), int):
            keys.append(("t", extra["target"]))
        for key in keys:
            m = first.setdefault(key, n)
            parent[root(n)] = root(m)
    ids: dict[int, int] = {}
    return [ids.setdefault(root(n), len(ids)) for n in range(len(parent))]


class LazyFastPath:
    """A fast path built on first use: with every frame in the feature cache, the models
    are never loaded. `close()` closes it if it was built."""

    def __init__(self, cfg: FastPathConfig):
        self.cfg = cfg
        self._fp: FastPath | None = None

    def get(self) -> FastPath:
        if self._fp is None:
            self._fp = FastPath(self.cfg)
        return self._fp

    def close(self) -> None:
        if self._fp is not None:
            self._fp.close()
            self._fp = None


def collect_session(
    folder: str | os.PathLike[str] | Session,
    fp: FastPath | LazyFastPath,
    *,
    screen_px: tuple[int, int] | None = None,
    mirrored: bool | None = None,
    cache: bool = False,
    both_reads: bool = False,
    reading: Callable[[Session], None] | None = None,
) -> Collected:
    """Every frame of a session through the fast path, in time order, with its label.

    Frames without a usable gaze (no face, blink, an error) go to `rejected` with the
    reason; so do files the session reader or the image decoder refused. When neither a
    manifest nor the caller says whether the frames are selfie views, the frames tell
    (`looks_mirrored`), and a mirrored session is read again un-mirrored. With `both_reads`
    and nothing stated, the other read is kept in `other` unless the frames say the same
    with any one target left out: the decision is made here on every target, and a
    leave-one-target-out evaluation must make it again without the target it holds out
    (`calibration.mapping.candidates.reads_ruled_out`), or the held-out target's own label
    chooses how its frames are read. A statement wins: then there is no other read.
    `cache`: per-frame features via `feature_cache`. `reading`: told before the networks
    read the session's frames (a cache miss), for progress."""
    session = (
        folder
        if isinstance(folder, Session)
        else read_session(folder, screen_px=screen_px, mirrored=mirrored)
    )
    out = _collect(session, fp, unmirror=session.mirrored, cache=cache, reading=reading)
    if session.mirrored_stated:
        out.mirror_basis = "manifest" if session.manifest is not None else "stated"
        return out
    r = looks_mirrored(out.samples)
    both_reads = both_reads and not every_fold_agrees(*_yaw_x_targets(out.samples))
    if r is None or r <= 0:
        out.mirror_basis = (
            "not stated; the targets cannot tell (taken as not mirrored)"
            if r is None
            else f"not stated; detected not mirrored (gaze yaw vs target x r={r:+.2f})"
        )
        if both_reads:
            out.other = _collect(session, fp, unmirror=True, cache=cache, reading=reading)
        return out
    session.mirrored = True
    raw, out = out, _collect(session, fp, unmirror=True, cache=cache, reading=reading)
    out.mirror_basis = f"not stated; detected mirrored (gaze yaw vs target x r={r:+.2f})"
    out.other = raw if both_reads else None
    return out


def looks_mirrored(samples: list[LabelledSample]) -> float | None:
    """Which way the gaze turns as the targets move right (`yaw_follows_x`), over the settled
    samples that have a gaze."""
    return yaw_follows_x(*_yaw_x_targets(samples))


def _yaw_x_targets(samples: list[LabelledSample]) -> tuple[np.ndarray, ...]:
    """(gaze yaw, target x, target) of the settled samples that have a gaze."""
    use = [ls for ls in samples if not ls.settling and ls.sample.gaze_yp_raw is not None]
    return (
        np.array([float(ls.sample.gaze_yp_raw[0]) for ls in use]),
        np.array([float(ls.label_px[0]) for ls in use]),
        np.array([ls.target for ls in use], dtype=np.int64),
    )


def _collect(
    session: Session,
    fp: FastPath | LazyFastPath,
    *,
    unmirror: bool,
    cache: bool = False,
    reading: Callable[[Session], None] | None = None,
) -> Collected:
    path = None
    if cache:
        path = feature_cache.entry_path(session, feature_cache.config_digest(fp.cfg), unmirror)
        hit = feature_cache.load_entry(path, session)
        if hit is not None:
            return _from_entry(session, hit, unmirror)
    if reading is not None:
        reading(session)
    live = fp.get() if isinstance(fp, LazyFastPath) else fp
    frames, skipped, samples = _run_frames(session, live, unmirror)
    if path is not None:
        feature_cache.save_entry(path, frames, skipped)
    return _from_entry(session, {"frames": frames, "skipped": skipped}, unmirror, samples)


def _run_frames(session: Session, fp: FastPath, unmirror: bool) -> tuple[list, list, list]:
    """Each decoded frame as {name, t_ns, why | features} (what the cache stores) and the
    samples themselves (with the embedding, which the cache leaves out)."""
    frames, samples = [], []
    fp.reset()
    with SessionSource(session, unmirror=unmirror) as src:
        for frame in src:
            s = fp.process(frame)
            why = _unusable(s)
            row = {"name": frame.name, "t_ns": int(frame.t_ns)}
            row.update({"why": why} if why else {"features": _named_features(s)})
            frames.append(row)
            samples.append(s)
        skipped = [{"file": r.file, "why": r.why} for r in src.skipped]
    _judge_warmup_blinks(frames, samples, fp)
    return frames, skipped, samples


def _judge_warmup_blinks(frames: list[dict], samples: list[GazeSample], fp: FastPath) -> None:
    """The blink rule judges a frame against the person's usual aperture, which it learns
    from the first few open-eyed frames (`fastpath.blink`): live, the first fraction of a
    second, judged by the floor alone. Of a session read whole those may be any stills, and
    a half-blink among them was kept: one sitting whose targets came in another order put
    its half-blink first and read it 546 px off (mean 96 px against 64 in its own order).
    Here they are judged again against the reference the session ended with (its last
    `window` open-eyed frames), as every later frame was, so the order of the stills does
    not decide which ones count. The row decides (a frame judged a blink here keeps its
    sample's `quality.blink` False: nothing reads it past this point)."""
    blinks = getattr(fp, "blinks", None)  # a stand-in fast path may judge none
    if blinks is None:
        return
    for i in blinks.warmup_blinks([_apertures(s) for s in samples]):
        if "features" in frames[i]:
            del frames[i]["features"]
            frames[i]["why"] = "eyes closed (blink)"


def _apertures(s: GazeSample) -> tuple[float, float] | None:
    """The two apertures the blink rule judged this sample by; None when it judged none."""
    f = getattr(s, "features", None)
    if f is None or not s.quality.face:
        return None
    return f.left.aperture, f.right.aperture


def _named_features(s: GazeSample) -> dict[str, float]:
    return {k: v for k, v in s.feature_dict().items() if not k.startswith("emb_")}


def _from_entry(
    session: Session, entry: dict, unmirror: bool, samples: list | None = None
) -> Collected:
    out = Collected(session=session, rejected=list(session.rejected), unmirrored=unmirror)
    ids = target_ids(session)
    by_name = {it.name: (it, tid) for it, tid in zip(session.items, ids, strict=True)}
    for k, row in enumerate(entry["frames"]):
        item, tid = by_name[row["name"]]
        if row.get("why"):
            out.rejected.append(Rejection(file=item.image.name, why=row["why"]))
            continue
        extra = item.record.model_extra or {}
        out.samples.append(
            LabelledSample(
                name=item.image.name,
                t_ns=int(row["t_ns"]),
                label_px=item.label_px,
                target=tid,
                sample=(
                    samples[k]
                    if samples is not None
                    else feature_cache.CachedSample(dict(row["features"]))
                ),
                settling=bool(extra.get("settling", False)),
            )
        )
    out.rejected.extend(Rejection(file=r["file"], why=r["why"]) for r in entry["skipped"])
    return out


def _unusable(s: GazeSample) -> str | None:
    q = s.quality
    if q.error:
        return f"fast path: {q.error}"
    if not q.face:
        return "no face found"
    if q.blink:
        return "eyes closed (blink)"
    if s.gaze_yp_raw is None:
        return "no gaze estimate"
    return None
