"""The repository's scripts/ as modules: tests call a script's functions (its figures, its checks) directly."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.support.data import REPO


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as the module `name`, registered in sys.modules (its dataclasses resolve through it);
    loaded once: another test module asking for it gets the same one."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
