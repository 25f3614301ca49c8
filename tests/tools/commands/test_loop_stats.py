"""`loop_stats --config`: a JSON object inline or in a file; a bad one is one line before any
worker starts (a field the loop does not have used to be a traceback from each worker)."""

from __future__ import annotations

import json

import pytest

from gazeloop.tools.commands import loop_stats


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ('{"bogus": 1}', "bogus: not a known field"),
        ('{"huber_k": -1}', "huber_k: Input should be greater than 0"),
        ("{bad", "not valid JSON"),
        ("missing.json", "not a JSON object and not a readable file"),
    ],
)
def test_a_bad_config_is_one_line_naming_it(config, says, capsys):
    with pytest.raises(SystemExit) as e:
        loop_stats.main(["--seeds", "1", "--config", config])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1] and config in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_a_config_file_is_read_and_reported(tmp_path, capsys):
    f = tmp_path / "loop.json"
    f.write_text(json.dumps({"huber_k": 2.5, "aspect": 1.6}))
    assert loop_stats.main(["--seeds", "1", "--jobs", "1", "--config", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"] == {"huber_k": 2.5, "aspect": 1.6}
    assert out["labels_to_recover_per_seed"]["runs"] == 1
