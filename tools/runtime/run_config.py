"""One `--config` for the running system: the fast path, the drift loop, the snapshot policy
and the oracle, and the resolved settings written as `config.json` beside a command's output.

The pattern is pytorch_mpiigaze's: defaults in code, the file over them, the flags over the
file, and what was finally used saved next to what it produced, so a report or a demo folder
says how it was made without the command line that made it.

A file is either sectioned,

    {"fastpath": {...}, "loop": {...}, "policy": {...}, "oracle": {...}}

each section optional, or (as before the sections existed) a flat object of fast-path
settings, which every existing file is and keeps working as. A file that mixes the two is
refused: a section name beside fast-path keys is a typo or a misunderstanding, and guessing
which was meant would silently drop settings.

The loop's screen aspect is not a setting here: it comes from the screen each run maps to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gazeloop.calibration.drift.loop import LoopConfig
from gazeloop.calibration.problems import first_problem
from gazeloop.calibration.store.atomic import atomic_write_bytes
from gazeloop.fastpath.pipeline import FastPathConfig
from gazeloop.oracle.policy import (
    DEFAULT_FIXATION_MS,
    DEFAULT_MAX_GAP_MS,
    DEFAULT_MAX_SPEED,
    DEFAULT_MIN_INTERVAL_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    SnapshotPolicy,
)
from gazeloop.tools.runtime.live import ORACLE_TIMEOUT_S

SECTIONS = ("fastpath", "loop", "policy", "oracle")
CONFIG_FILE = "config.json"


class PolicySettings(BaseModel):
    """`oracle.policy.SnapshotPolicy`'s settings: when a frame becomes a snapshot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_interval_s: float = Field(DEFAULT_MIN_INTERVAL_S, ge=0, allow_inf_nan=False)
    fixation_ms: float = Field(DEFAULT_FIXATION_MS, ge=0, allow_inf_nan=False)
    max_speed: float = Field(DEFAULT_MAX_SPEED, gt=0, allow_inf_nan=False)
    max_gap_ms: float = Field(DEFAULT_MAX_GAP_MS, ge=0, allow_inf_nan=False)
    request_timeout_s: float | None = Field(DEFAULT_REQUEST_TIMEOUT_S, gt=0, allow_inf_nan=False)

    def build(self) -> SnapshotPolicy:
        return SnapshotPolicy(
            self.min_interval_s,
            self.fixation_ms,
            self.max_speed,
            max_gap_ms=self.max_gap_ms,
            request_timeout_s=self.request_timeout_s,
        )


class OracleSettings(BaseModel):
    """How long the running system gives the oracle for one snapshot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(ORACLE_TIMEOUT_S, gt=0, allow_inf_nan=False)


class RunConfig(BaseModel):
    """Every setting of a run, by section (module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fastpath: FastPathConfig = Field(default_factory=FastPathConfig)
    # `LoopConfig`'s fields but the aspect, resolved (defaults filled in) when read.
    loop: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    oracle: OracleSettings = Field(default_factory=OracleSettings)

    @field_validator("loop", mode="before")
    @classmethod
    def _loop_fields(cls, v: Any) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise ValueError("a JSON object of drift-loop settings is needed")
        if "aspect" in v:
            raise ValueError("'aspect' is not a setting: the screen each run maps to sets it")
        return LoopConfig(**v).model_dump(exclude={"aspect"})

    def loop_config(self, aspect: float | None = None) -> LoopConfig:
        """The loop's config for a screen of this physical width / height (None: for
        `Live`, which sets each profile's own)."""
        return LoopConfig(**self.loop, **({} if aspect is None else {"aspect": aspect}))

    @classmethod
    def from_doc(
        cls, doc: dict[str, Any], where: str, fastpath: dict[str, Any] | None = None
    ) -> RunConfig:
        """A config file's object, sectioned or flat (module doc), with `fastpath` settings
        (the flags) over the file's; one line naming `where` and the field when a setting
        is wrong."""
        sections = [k for k in doc if k in SECTIONS]
        if sections and len(sections) < len(doc):
            others = ", ".join(repr(k) for k in doc if k not in SECTIONS)
            raise ValueError(
                f"{where}: {others} beside the sections {', '.join(sections)}: put fast-path "
                'settings under "fastpath" (or give only fast-path settings, unsectioned)'
            )
        data = dict(doc) if sections else {"fastpath": dict(doc)}
        base = data.get("fastpath", {})
        if fastpath and isinstance(base, dict):  # else validation says what it is instead
            data["fastpath"] = {**base, **fastpath}
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problem = first_problem(e)
            if sections:
                raise ValueError(f"{where}: invalid setting: {problem}") from None
            # The file named no section: say its fields as it wrote them.
            for prefix in ("fastpath.", "fastpath: "):
                problem = problem.removeprefix(prefix)
            raise ValueError(f"{where}: invalid fast-path setting: {problem}") from None

    def write(self, folder: str | Path) -> Path:
        """`config.json` in `folder`, written atomically: the settings this output was made
        with."""
        path = Path(folder) / CONFIG_FILE
        atomic_write_bytes(path, (self.model_dump_json(indent=2) + "\n").encode())
        return path
