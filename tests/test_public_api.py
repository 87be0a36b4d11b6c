"""enosnet's one public surface: everything re-exported from the package, listed in a sorted __all__."""

from __future__ import annotations

import inspect

import enosnet


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(enosnet)
              if not name.startswith("_") and not inspect.ismodule(getattr(enosnet, name))
              and name not in {"annotations", "importlib", "TYPE_CHECKING", "Any"}}
    assert set(enosnet.__all__) == public


def test_importing_enosnet_does_not_load_the_heavy_layers() -> None:
    import subprocess
    import sys

    code = "import sys, enosnet; print(sorted(m for m in sys.modules if m.startswith(('enosnet.bench', "
    code += "'enosnet.remote', 'enosnet.coordinator', 'pydantic', 'ansible', 'boto3', 'matplotlib'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_all_is_sorted_and_unique() -> None:
    assert list(enosnet.__all__) == sorted(set(enosnet.__all__))


def test_every_public_name_has_a_docstring() -> None:
    missing = [name for name in enosnet.__all__
               if (inspect.isclass(getattr(enosnet, name)) or inspect.isfunction(getattr(enosnet, name)))
               and not inspect.getdoc(getattr(enosnet, name))]
    assert missing == []
