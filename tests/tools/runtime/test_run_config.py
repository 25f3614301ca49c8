"""One `--config` for the fast path, the drift loop, the snapshot policy and the oracle
(`tools.runtime.run_config`), and the resolved settings written beside a command's output."""

from __future__ import annotations

import json

import pytest

from gazeloop.calibration.drift.loop import LoopConfig
from gazeloop.tools.commands._args import with_interval
from gazeloop.tools.runtime.run_config import PolicySettings, RunConfig


def test_a_flat_file_is_fast_path_settings_as_before():
    cfg = RunConfig.from_doc({"filter": "kalman", "threads": 2}, "f.json")
    assert (cfg.fastpath.filter, cfg.fastpath.threads) == ("kalman", 2)
    assert cfg.policy == PolicySettings() and cfg.loop == LoopConfig().model_dump(
        exclude={"aspect"}
    )


def test_sections_reach_their_parts_and_the_flags_win_over_the_file():
    doc = {
        "fastpath": {"filter": "kalman", "threads": 2},
        "loop": {"change_logp": 9.0},
        "policy": {"min_interval_s": 2.5},
        "oracle": {"timeout_s": 7},
    }
    cfg = RunConfig.from_doc(doc, "f.json", {"threads": 3})
    assert (cfg.fastpath.filter, cfg.fastpath.threads) == ("kalman", 3)
    assert cfg.loop_config(1.6) == LoopConfig(aspect=1.6, change_logp=9.0)
    assert cfg.policy.build().min_interval_ns == 2_500_000_000
    assert cfg.oracle.timeout_s == 7.0
    # Flags alone, no file.
    assert RunConfig.from_doc({}, "command line", {"filter": "none"}).fastpath.filter == "none"


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"loop": {"aspect": 2}}, "f.json: invalid setting: loop: 'aspect' is not a setting"),
        ({"loop": {"change_logp": "high"}}, "f.json: invalid setting: loop.change_logp: Input"),
        # Taken before: the loop then never recovered from a step, and said nothing.
        ({"loop": {"change_logp": float("inf")}}, "loop.change_logp: Input should be a finite"),
        ({"fastpath": {"crop_scale": 1e308}}, "fastpath.crop_scale: Input should be less than"),
        ({"loop": {"bogus": 1}}, "f.json: invalid setting: loop.bogus: not a known field"),
        ({"loop": 3}, "loop: a JSON object of drift-loop settings is needed"),
        ({"policy": {"max_speed": 0}}, "f.json: invalid setting: policy.max_speed"),
        ({"policy": {"fixation_ms": float("nan")}}, "policy.fixation_ms"),
        ({"oracle": {"timeout_s": -1}}, "oracle.timeout_s: Input should be greater than 0"),
        ({"fastpath": {"threads": 0}}, "f.json: invalid setting: fastpath.threads"),
        ({"fastpath": 3}, "fastpath: Input should be a valid dictionary"),
        ({"fastpath": None}, "fastpath: Input should be a valid dictionary"),
        # A flat file's field is named as the file wrote it, a model validator's too.
        ({"threads": 0}, "f.json: invalid fast-path setting: threads: Input should be greater"),
        (
            {"filter_params": {"min_cutoff": -1}},
            "f.json: invalid fast-path setting: min_cutoff must be > 0 Hz, got -1",
        ),
        ({"loop": {}, "filter": "kalman"}, "'filter' beside the sections loop"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_file_and_field(doc, says):
    # Flags beside a fast-path section that is not an object must not paper over it.
    flags = {"threads": 1} if not isinstance(doc.get("fastpath", {}), dict) else None
    with pytest.raises(ValueError) as e:
        RunConfig.from_doc(doc, "f.json", flags)
    text = str(e.value)
    assert says in text and "\n" not in text, text


def test_the_written_file_reads_back_as_the_same_settings(tmp_path):
    cfg = RunConfig.from_doc({"loop": {"huber_k": 3.0}, "policy": {"fixation_ms": 90}}, "f")
    path = cfg.write(tmp_path)
    assert path == tmp_path / "config.json"
    assert RunConfig.from_doc(json.loads(path.read_text()), str(path)) == cfg


def test_snapshot_every_overrides_only_the_interval():
    policy = PolicySettings(min_interval_s=9.0, fixation_ms=80.0)
    assert with_interval(policy, None) is policy
    assert with_interval(policy, 0.5) == PolicySettings(min_interval_s=0.5, fixation_ms=80.0)
