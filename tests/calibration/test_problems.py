"""A pydantic error as one line naming the field (`calibration.problems`), the wording every
reader of a stored or sent document uses."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gazeloop.calibration.problems import first_problem, one_line


class _Thing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(1, ge=0)
    name: str = "x"
    inner: list[_Thing] = []


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"n": "many"}, "n: Input should be a valid integer, unable to parse string as an integer"),
        ({"n": -1}, "n: Input should be greater than or equal to 0 (got -1)"),
        (
            {"n": -1, "name": 5},
            "n: Input should be greater than or equal to 0 (got -1) (and 1 more)",
        ),
        ({"colour": "red"}, "colour: not a known field"),
        ({"inner": [{}, {"n": -2}]}, "inner.1.n: Input should be greater than or equal to 0"),
        ({"name": "y" * 80}, None),
    ],
)
def test_a_validation_error_is_one_line_naming_the_field(doc, says):
    if says is None:
        _Thing.model_validate(doc)
        return
    with pytest.raises(ValidationError) as e:
        _Thing.model_validate(doc)
    line = first_problem(e.value)
    assert line.startswith(says) and "\n" not in line and "errors.pydantic.dev" not in line


def test_one_line_takes_any_error():
    with pytest.raises(ValidationError) as e:
        _Thing.model_validate({"n": -1, "name": 5})
    assert one_line(e.value) == first_problem(e.value)
    assert one_line(ValueError("bad\n  value")) == "bad value"
