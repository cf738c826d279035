"""Parsers of DFT-code output: one module per code behind one small interface.

A parser opens one calculation folder and yields :class:`eqtb.data.folder.Frame` objects (structure,
H/S/D :class:`~eqtb.operator.Operator` in eqtb units and orbital order, k-points, eigenvalues),
which :func:`eqtb.data.folder.write_folder` writes as a dataset. Units and orbital conventions are
converted inside the parser, once, with :mod:`eqtb.data.conventions`.

Adding a code = one module defining a subclass of :class:`Parser` decorated with :func:`register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Iterator

from eqtb.basis import Basis


class ParseError(ValueError):
    """DFT output that cannot be parsed; the message names the file and the problem."""


class Parser:
    """Interface of a DFT-output parser (one calculation folder, possibly several frames)."""

    #: name used on the command line (``eqtb parse -m NAME``)
    name: ClassVar[str] = ""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise ParseError(f"{self.path} does not exist")

    @classmethod
    def detect(cls, path: str | Path) -> bool:
        """True if ``path`` looks like an output folder of this code."""
        raise NotImplementedError

    @property
    def basis(self) -> Basis:
        raise NotImplementedError

    @property
    def nframes(self) -> int:
        raise NotImplementedError

    def frame(self, k: int, hamiltonian: bool = True, overlap: bool = True, density_matrix: bool = False,
              eigenvalues: bool = False):
        """Frame k as an :class:`eqtb.data.folder.Frame` holding only what was asked for and exists
        (asking for something the run did not write raises ParseError naming the missing file)."""
        raise NotImplementedError

    def frames(self, **kw) -> Iterator:
        for k in range(self.nframes):
            yield self.frame(k, **kw)


PARSERS: dict[str, type[Parser]] = {}


def register(cls: type[Parser]) -> type[Parser]:
    """Class decorator adding a parser to :data:`PARSERS` under ``cls.name``."""
    PARSERS[cls.name] = cls
    return cls


def get_parser(name: str) -> type[Parser]:
    load_all()
    if name not in PARSERS:
        raise ParseError(f"unknown DFT code {name!r}; known: {sorted(PARSERS)}")
    return PARSERS[name]


#: parsers of formats that live outside this package (they read and write, so they sit in eqtb.data)
_EXTERNAL = ("eqtb.data.deeph",)


def load_all() -> None:
    """Import every parser module so that it registers itself."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    for name in _EXTERNAL:
        importlib.import_module(name)
