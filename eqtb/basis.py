"""Orbital bases: which orbitals each element carries, in which order, and the irreps they need.

Conventions (identical to DeePTB v2.2 / dftio, see shared/spec/FORMATS.md sections 2-3):

* A basis maps element symbol -> basis string such as ``"2s2p1d"`` (counts of radial functions
  per angular momentum, one digit 1-9 each, every letter at most once) or a list of shell labels
  such as ``["3s", "3p", "d*"]`` (Slater-Koster style).
* Shells inside an atom are l-major, then zeta: ``"2s2p1d"`` -> s, s, p, p, d (13 orbitals).
* Inside a shell the 2l+1 orbitals are real spherical harmonics ordered m = -l..l without the
  Condon-Shortley phase: p = (y, z, x), d = (xy, yz, 3z^2-r^2, xz, x^2-y^2). These are e3nn's
  real spherical harmonics evaluated on the permuted vector (y, z, x).
* Element types are sorted by atomic number (type 0 = lightest element).
* The *full basis* holds, for every l, as many shells as the element with the most shells of that
  l. Each element's k-th shell of angular momentum l sits at the full-basis shell ``"{k}{l}"``;
  every block in eqtb is stored in this full layout (``Basis.full_norb`` rows and columns) with
  ``Basis.orbital_index[type]`` selecting the element's own orbitals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from ase.data import atomic_numbers as _ASE_Z
from ase.data import chemical_symbols as _SYMBOLS

ANGULAR_LETTERS = "spdfgh"


class BasisError(ValueError):
    """A basis specification that cannot be understood."""


@dataclass(frozen=True)
class Shell:
    """One shell of the full basis: angular momentum ``l`` and its 1-based index among shells of
    that l (``zeta``). ``name`` is DeePTB's full-basis name, e.g. ``"2p"``."""

    l: int
    zeta: int

    @property
    def name(self) -> str:
        return f"{self.zeta}{ANGULAR_LETTERS[self.l]}"

    @property
    def dim(self) -> int:
        return 2 * self.l + 1


@dataclass(frozen=True)
class OrbitalPair:
    """An ordered pair of full-basis shells (row shell ``a``, column shell ``b``) and where its
    ``(2 l_a + 1) x (2 l_b + 1)`` sub-block sits, both in a block (``row``, ``col`` offsets in the
    full layout) and in a feature vector (``start`` offset, length ``a.dim * b.dim``)."""

    a: Shell
    b: Shell
    row: int
    col: int
    start: int

    @property
    def size(self) -> int:
        return self.a.dim * self.b.dim

    @property
    def name(self) -> str:
        return f"{self.a.name}-{self.b.name}"

    @property
    def irreps_l(self) -> range:
        """Total angular momenta L = |l_a - l_b| .. l_a + l_b carried by the sub-block."""
        return range(abs(self.a.l - self.b.l), self.a.l + self.b.l + 1)

    @property
    def parity(self) -> int:
        return (-1) ** (self.a.l + self.b.l)


def element_symbol(element: str | int) -> str:
    """Chemical symbol of an element given by symbol or atomic number; raises BasisError."""
    if isinstance(element, (int, np.integer)):
        if not 0 < int(element) < len(_SYMBOLS):
            raise BasisError(f"unknown atomic number {element}")
        return _SYMBOLS[int(element)]
    if element not in _ASE_Z or element == "X":
        raise BasisError(f"unknown element {element!r} in basis")
    return element


def parse_basis_string(spec: str, element: str = "?") -> tuple[int, ...]:
    """Parse ``"2s2p1d"`` into the list of shell angular momenta, l-major: ``(0, 0, 1, 1, 2)``."""
    if not isinstance(spec, str) or not spec:
        raise BasisError(f"basis of {element}: expected a string like '2s2p1d', got {spec!r}")
    tokens = re.findall(r"([1-9])([spdfgh])", spec)
    if "".join(n + c for n, c in tokens) != spec:
        raise BasisError(
            f"basis of {element}: malformed basis string {spec!r}; expected counts 1-9 followed by "
            f"one of s,p,d,f,g,h, e.g. '2s2p1d'"
        )
    counts: dict[int, int] = {}
    for n, letter in tokens:
        l = ANGULAR_LETTERS.index(letter)
        if l in counts:
            raise BasisError(f"basis of {element}: letter {letter!r} appears twice in {spec!r}")
        counts[l] = int(n)
    return tuple(l for l in sorted(counts) for _ in range(counts[l]))


def shell_label_key(label: str) -> tuple[int, str]:
    """DeePTB's sort key of a shell label such as ``"3p"`` or ``"d*"``: the angular momentum, then the
    first character among 1-9 and '*' (``"0"`` when there is none)."""
    tag = re.search(r"[1-9*]", label)
    return ANGULAR_LETTERS.index(re.search(r"[spdfgh]", label).group(0)), tag.group(0) if tag else "0"


def parse_basis_list(spec: list[str], element: str = "?") -> tuple[int, ...]:
    """Parse a Slater-Koster shell list such as ``["3s", "3p", "d*"]`` into angular momenta,
    sorted as DeePTB sorts them (:func:`shell_label_key`)."""
    for label in spec:
        if not isinstance(label, str):
            raise BasisError(f"basis of {element}: shell label {label!r} is not a string")
        letters = [c for c in label if c in ANGULAR_LETTERS]
        if len(letters) != 1 or not re.fullmatch(r"[0-9*]*[spdfgh][0-9*]*", label):
            raise BasisError(f"basis of {element}: malformed shell label {label!r} (e.g. '3s', 'd*')")
    if len(set(spec)) != len(spec):
        raise BasisError(f"basis of {element}: repeated shell label in {spec!r}")
    return tuple(shell_label_key(label)[0] for label in sorted(spec, key=shell_label_key))


@dataclass(frozen=True)
class ElementBasis:
    """The orbitals of one element: its shells (angular momenta, l-major) and their offsets."""

    symbol: str
    spec: str | tuple[str, ...]
    shell_l: tuple[int, ...]

    @property
    def Z(self) -> int:
        return _ASE_Z[self.symbol]

    @property
    def norb(self) -> int:
        return sum(2 * l + 1 for l in self.shell_l)

    @property
    def count(self) -> dict[int, int]:
        """Number of shells per angular momentum."""
        out: dict[int, int] = {}
        for l in self.shell_l:
            out[l] = out.get(l, 0) + 1
        return out

    @property
    def shells(self) -> tuple[Shell, ...]:
        """This element's shells named in the full basis (k-th shell of l -> ``Shell(l, k)``)."""
        seen: dict[int, int] = {}
        out = []
        for l in self.shell_l:
            seen[l] = seen.get(l, 0) + 1
            out.append(Shell(l, seen[l]))
        return tuple(out)

    @property
    def labels(self) -> tuple[str, ...] | None:
        """The shell labels of a list basis in shell order (``("3s", "3p", "d*")``, sorted by
        :func:`shell_label_key`, as :attr:`shells`); None for a basis string, whose shells have none."""
        if isinstance(self.spec, str):
            return None
        return tuple(sorted(self.spec, key=shell_label_key))

    @property
    def string(self) -> str:
        """Canonical basis string, e.g. ``"2s2p1d"``."""
        return "".join(f"{n}{ANGULAR_LETTERS[l]}" for l, n in sorted(self.count.items()))


class Basis:
    """The orbital basis of a whole model or dataset: one ``ElementBasis`` per element.

    ``Basis({"Si": "1s1p"})``; ``Basis({"Mo": "3s2p2d1f", "S": "2s2p1d"})``;
    ``Basis({"Si": ["3s", "3p", "d*"]})``.
    """

    def __init__(self, spec: dict[str, str | list[str]] | "Basis"):
        if isinstance(spec, Basis):
            spec = spec.spec
        if not isinstance(spec, dict) or not spec:
            raise BasisError(f"basis must be a non-empty dict element -> basis string, got {spec!r}")
        elements = []
        for symbol, s in spec.items():
            symbol = element_symbol(symbol)
            if isinstance(s, str):
                shell_l = parse_basis_string(s, symbol)
            elif isinstance(s, (list, tuple)):
                shell_l = parse_basis_list(list(s), symbol)
                s = tuple(s)
            else:
                raise BasisError(f"basis of {symbol}: expected a string or a list of shells, got {s!r}")
            elements.append(ElementBasis(symbol, s, shell_l))
        self.elements: tuple[ElementBasis, ...] = tuple(sorted(elements, key=lambda e: e.Z))

    # ------------------------------------------------------------------ identity
    @property
    def spec(self) -> dict[str, str | list[str]]:
        return {e.symbol: (list(e.spec) if isinstance(e.spec, tuple) else e.spec) for e in self.elements}

    def __eq__(self, other) -> bool:
        return isinstance(other, Basis) and all(
            a.symbol == b.symbol and a.shell_l == b.shell_l for a, b in zip(self.elements, other.elements)
        ) and len(self.elements) == len(other.elements)

    def __hash__(self) -> int:
        return hash(tuple((e.symbol, e.shell_l) for e in self.elements))

    def __repr__(self) -> str:
        return f"Basis({ {e.symbol: e.string for e in self.elements} })"

    # ------------------------------------------------------------------ types
    @property
    def symbols(self) -> list[str]:
        """Element symbols in type order (ascending atomic number)."""
        return [e.symbol for e in self.elements]

    @property
    def numbers(self) -> np.ndarray:
        return np.array([e.Z for e in self.elements], dtype=np.int64)

    @property
    def n_types(self) -> int:
        return len(self.elements)

    def __getitem__(self, element: str | int) -> ElementBasis:
        symbol = element_symbol(element)
        for e in self.elements:
            if e.symbol == symbol:
                return e
        raise BasisError(f"element {symbol} is not in the basis {self!r}")

    def types_of(self, numbers) -> np.ndarray:
        """Type index of every atom given its atomic number; clear error for elements not in the basis."""
        numbers = np.asarray(numbers, dtype=np.int64)
        lookup = np.full(max(int(numbers.max(initial=0)), int(self.numbers.max())) + 1, -1, dtype=np.int64)
        lookup[self.numbers] = np.arange(self.n_types)
        types = lookup[numbers]
        if (types < 0).any():
            missing = sorted({_SYMBOLS[z] for z in numbers[types < 0]})
            raise BasisError(f"elements {missing} have no basis; the basis covers {self.symbols}")
        return types

    def norb_of(self, numbers) -> np.ndarray:
        """Number of orbitals of every atom (its own basis, not the full layout)."""
        return np.array([e.norb for e in self.elements], dtype=np.int64)[self.types_of(numbers)]

    # ------------------------------------------------------------------ full basis
    @cached_property
    def max_count(self) -> dict[int, int]:
        """Largest number of shells of each l over all elements."""
        out: dict[int, int] = {}
        for e in self.elements:
            for l, n in e.count.items():
                out[l] = max(out.get(l, 0), n)
        return dict(sorted(out.items()))

    @cached_property
    def full_shells(self) -> tuple[Shell, ...]:
        """Shells of the full basis: ``1s..ns, 1p..np, 1d..`` (l-major)."""
        return tuple(Shell(l, k) for l, n in self.max_count.items() for k in range(1, n + 1))

    @cached_property
    def shell_offset(self) -> dict[Shell, int]:
        """Row offset of every full-basis shell in the full layout."""
        out, o = {}, 0
        for s in self.full_shells:
            out[s] = o
            o += s.dim
        return out

    @property
    def full_norb(self) -> int:
        return sum(s.dim for s in self.full_shells)

    @cached_property
    def orbital_index(self) -> tuple[np.ndarray, ...]:
        """For every type, the positions of its own orbitals (in its block order) in the full layout."""
        out = []
        for e in self.elements:
            idx = [self.shell_offset[s] + m for s in e.shells for m in range(s.dim)]
            out.append(np.array(idx, dtype=np.int64))
        return tuple(out)

    @cached_property
    def orbital_mask(self) -> np.ndarray:
        """Boolean [n_types, full_norb]: which full-layout orbitals each type has."""
        mask = np.zeros((self.n_types, self.full_norb), dtype=bool)
        for t, idx in enumerate(self.orbital_index):
            mask[t, idx] = True
        return mask

    def orbital_labels(self, element: str | int) -> list[str]:
        """Human-readable labels of an element's orbitals in block order, e.g. ``'1p_y'``."""
        names = {0: ["s"], 1: ["y", "z", "x"], 2: ["xy", "yz", "z2", "xz", "x2-y2"]}
        out = []
        for s in self[element].shells:
            comps = names.get(s.l, [f"m{m}" for m in range(-s.l, s.l + 1)])
            out += [s.name if s.l == 0 else f"{s.name}_{c}" for c in comps]
        return out

    # ------------------------------------------------------------------ orbital pairs
    def _pairs(self, upper_only: bool) -> tuple[OrbitalPair, ...]:
        """Orbital pairs of the full basis in DeePTB's feature order: pair types (l1 <= l2) in the
        order s-s, s-p, ..., p-p, ...; inside a pair type the shell pairs in row-major order.
        With ``upper_only`` only pairs with full-basis index(a) <= index(b) (DeePTB's reduced
        matrix elements); otherwise every ordered pair, the (l2, l1) pairs of a type following
        right after its (l1, l2) pairs."""
        shells = self.full_shells
        index = {s: k for k, s in enumerate(shells)}
        ls = list(self.max_count)
        pairs, start = [], 0
        for x, l1 in enumerate(ls):
            for l2 in ls[x:]:
                group = [(a, b) for a in shells if a.l == l1 for b in shells if b.l == l2
                         if not upper_only or index[a] <= index[b]]
                if not upper_only and l1 != l2:
                    group += [(b, a) for a, b in group]
                for a, b in group:
                    pairs.append(OrbitalPair(a, b, self.shell_offset[a], self.shell_offset[b], start))
                    start += a.dim * b.dim
        return tuple(pairs)

    @cached_property
    def upper_pairs(self) -> tuple[OrbitalPair, ...]:
        """Shell pairs with index(a) <= index(b): DeePTB's reduced-matrix-element layout, used for
        onsite blocks (which are symmetric) and for DeePTB-compatible edge features."""
        return self._pairs(upper_only=True)

    @cached_property
    def all_pairs(self) -> tuple[OrbitalPair, ...]:
        """Every ordered shell pair: the layout of a complete off-site block."""
        return self._pairs(upper_only=False)

    @property
    def n_rme(self) -> int:
        """DeePTB's ``reduced_matrix_element``: length of the upper-pair feature vector."""
        p = self.upper_pairs[-1]
        return p.start + p.size

    def pair_mask(self, pairs: tuple[OrbitalPair, ...], type_i: int, type_j: int) -> np.ndarray:
        """Boolean feature mask: which entries of a feature in layout ``pairs`` are real orbitals of
        a block between an atom of ``type_i`` (rows) and one of ``type_j`` (columns)."""
        si, sj = set(self.elements[type_i].shells), set(self.elements[type_j].shells)
        size = pairs[-1].start + pairs[-1].size
        mask = np.zeros(size, dtype=bool)
        for p in pairs:
            if p.a in si and p.b in sj:
                mask[p.start:p.start + p.size] = True
        return mask

    # ------------------------------------------------------------------ irreps
    def irreps(self, pairs: tuple[OrbitalPair, ...] | None = None) -> str:
        """Irreps of a feature vector in layout ``pairs`` (default: upper pairs), unsimplified, as
        an e3nn string: for every pair, L = |l1-l2|..l1+l2 with parity (-1)^(l1+l2)."""
        pairs = self.upper_pairs if pairs is None else pairs
        out = []
        for p in pairs:
            par = "e" if p.parity > 0 else "o"
            out += [f"1x{L}{par}" for L in p.irreps_l]
        return "+".join(out)

    @cached_property
    def essential_irreps(self) -> str:
        """DeePTB's essential irreps: the simplified irreps of the upper-pair layout keeping only
        natural parity (-1)^L, sorted by L. ``{"Si": "1s1p"}`` -> ``"2x0e+1x1o+1x2e"``."""
        counts: dict[int, int] = {}
        for p in self.upper_pairs:
            for L in p.irreps_l:
                if (-1) ** L == p.parity:
                    counts[L] = counts.get(L, 0) + 1
        return "+".join(f"{n}x{L}{'e' if L % 2 == 0 else 'o'}" for L, n in sorted(counts.items()))

    @property
    def lmax(self) -> int:
        return max(self.max_count)
