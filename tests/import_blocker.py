"""A script prelude that makes some top-level packages unimportable, for tests that check a
module works on machines without them (run it in a fresh interpreter: python -c PRELUDE + body)."""


def blocking_prelude(*packages: str) -> str:
    """Python source: after it runs, importing any of `packages` (or their submodules) raises
    ModuleNotFoundError and importlib.util.find_spec returns None for them."""
    return f"""
import importlib.abc, importlib.util, sys
BLOCKED = {tuple(packages)!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):
    return None if name.split(".")[0] in BLOCKED else _find_spec(name, package)
importlib.util.find_spec = find_spec
sys.meta_path.insert(0, Block())
"""
