"""The built-in init strategies, one file each, and every other file dropped into this folder.

Each module registers its ``Strategy`` (``init.registry``) when imported; this package imports the built-ins in
their documented order, then any other module here, so a new strategy is one new file.
"""
import importlib
import pkgutil

BUILTIN = ("default", "random", "mimetic", "impulse", "official")

for _name in BUILTIN:
    importlib.import_module(f"{__name__}.{_name}")
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in BUILTIN and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
