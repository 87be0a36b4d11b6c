"""enosnet's one public surface: everything re-exported from the package, listed in a sorted __all__."""

from __future__ import annotations

import inspect

import enosnet


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name, value in vars(enosnet).items()
              if not name.startswith("_") and not inspect.ismodule(value)}
    assert set(enosnet.__all__) == public


def test_all_is_sorted_and_unique() -> None:
    assert list(enosnet.__all__) == sorted(set(enosnet.__all__))


def test_every_public_name_has_a_docstring() -> None:
    missing = [name for name in enosnet.__all__
               if (inspect.isclass(getattr(enosnet, name)) or inspect.isfunction(getattr(enosnet, name)))
               and not inspect.getdoc(getattr(enosnet, name))]
    assert missing == []
