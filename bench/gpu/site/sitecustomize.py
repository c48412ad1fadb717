"""GPU-machine bench harness only (bench/gpu/prepare.sh puts it on the path there). The GPU image
lacks some of audiocraft's import-time dependencies (spaCy, PyAV, librosa, soundfile, soxr). The
code paths measured never call them, so where the real package is missing an inert stand-in is
imported instead; any use of one raises. (xFormers has its own minimal stand-in beside this.)"""
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

ROOTS = {"spacy", "av", "librosa", "soundfile", "sounddevice", "soxr"}


class _Missing(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": _refuse, "__call__": _refuse})


def _refuse(*args, **kwargs):
    raise RuntimeError("stub module on the device harness: this dependency is not installed")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in ROOTS:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Missing(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.append(_Finder())
