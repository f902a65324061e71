"""The model zoos ``model.arch`` may name, ``timm:<name>`` and ``torchvision:<name>``: neither is
a dependency, each is imported only when an arch names it, and a missing or broken one (or a
name it does not know) is a one-line `SimCLRError` with the fix. A config value's check,
so it sits with the config; `simclr.models.external` builds the models."""

from __future__ import annotations

import difflib
import importlib
import re
from types import ModuleType

from simclr.errors import SimCLRError

PACKAGES = ("timm", "torchvision")  # the model.arch prefixes: timm:NAME, torchvision:NAME


def is_external(arch: str) -> bool:
    """Whether ``arch`` names a timm or torchvision model (``timm:resnet18``)."""
    package, sep, name = arch.partition(":")
    return bool(sep) and package in PACKAGES and bool(name)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def failed_package(e: BaseException, package: str) -> str:
    """The package whose import raised ``e`` while ``package`` was imported: the module an
    ImportError names, else the innermost package of the traceback's frames but torch itself
    (timm imports torchvision: a torchvision built for another torch fails inside it, in a
    call into torch), else ``package``."""
    if isinstance(e, ImportError) and e.name:
        return e.name.split(".")[0]
    tb, found = e.__traceback__, None
    while tb is not None:
        match = re.search(r"[\\/](?:site|dist)-packages[\\/]([A-Za-z0-9_]+)",
                          tb.tb_frame.f_code.co_filename)
        if match and match.group(1) != "torch":
            found = match.group(1)
        tb = tb.tb_next
    return found or package


def import_package(package: str, arch: str) -> ModuleType:
    try:
        module = importlib.import_module(package)
        if package == "torchvision":
            importlib.import_module("torchvision.models")
        return module
    except Exception as e:  # ImportError, or a binary built for another torch
        culprit = failed_package(e, package)
        why = "" if culprit == package else f", because {culprit} does not"
        raise SimCLRError(f"model.arch={arch} needs the {package} package, which does not import "
                          f"here{why} ({type(e).__name__}: {first_line(e)}); pip install "
                          f"{culprit} built for this torch, or use model.arch=resnet18/34/50"
                          ) from None


def _names(package: str, module: ModuleType) -> list[str]:
    if package == "timm":
        return list(module.list_models())
    return list(module.models.list_models(module=module.models))  # classification models


def check_arch(arch: str) -> None:
    """SimCLRError unless the package of ``arch`` imports and knows the model's name."""
    package, _, name = arch.partition(":")
    names = _names(package, import_package(package, arch))
    if name.split(".")[0] not in names:  # timm names may carry a weight tag: resnet18.a1_in1k
        match = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{package}:{match[0]}'? " if match else ""
        raise SimCLRError(f"unknown {package} model '{name}' in model.arch={arch}: {hint}"
                          f"see {package}'s list_models()")



__all__ = ["PACKAGES", "check_arch", "failed_package", "first_line", "import_package",
           "is_external"]
