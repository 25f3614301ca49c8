"""The front door (`import gazeloop`): every public name resolves, lazily, and the README's
"From Python" section names each of them, so neither can drift from the other."""

from __future__ import annotations

import re

import gazeloop
from tests.paths import ROOT


def test_every_public_name_resolves_to_what_it_says():
    for name in gazeloop.__all__:
        obj = getattr(gazeloop, name)
        assert getattr(obj, "__name__", name) == name, name


def test_an_unknown_name_is_an_attribute_error():
    try:
        gazeloop.NoSuchThing  # noqa: B018
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("gazeloop.NoSuchThing resolved")


def test_the_readme_names_every_public_name():
    text = (ROOT / "README.md").read_text()
    section = re.search(r"## From Python\n(.*?)\n## ", text, re.S).group(1)
    named = [n for n in gazeloop.__all__ if f"`{n}`" in section or f"gazeloop.{n}" in section]
    missing = sorted(set(gazeloop.__all__) - set(named))
    assert not missing, f"README's 'From Python' does not mention {missing}"
