"""``dftbsk``: the Slater-Koster tables of a DFTB parameter set as a tight-binding model, as DFTB+
reads them, with DeePTB 2.2.1's ``dftbsk`` interpolation and cutoffs (its ``dptb/nn/dftbsk.py`` and
``dptb/nn/dftb/``).

Units: Angstrom and eV (the tables are converted when read, :mod:`eqtb.data.skf`).

**Tables.** ``skdata`` is a folder of DFTB+ files ``A-B.skf`` -- both ``A-B`` and ``B-A`` for every
pair of the basis' elements, ``A-A`` for each element -- or DeePTB's ``.pth`` dict of the same
tables; a relative path is taken from the current directory, as DeePTB does.

**Two-centre integrals.** The integral ``(a, b, m)`` of a directed edge i -> j (shell a of atom i,
shell b of atom j, in the edge frame where j lies at +z; :func:`eqtb.models.assembly.sk_integral_names`
names them, :class:`eqtb.models.assembly.SKAssembler` rotates them onto the bond) is, for elements
x of i and y of j, the table column ``(l_a, l_b, m)`` of ``x-y.skf`` when ``l_a <= l_b``, else
``(-1)^(l_a + l_b)`` times the column ``(l_b, l_a, m)`` of ``y-x.skf`` -- DFTB+'s reading of the
files (:mod:`eqtb.data.skf`): ``Hsp0`` of ``B-N.skf`` is ``<s_B|H|p_z,N>`` with N at +z. Each
element may carry one shell per angular momentum (the tables have one s, one p, one d, one f);
a basis list such as ``["2s", "2p", "d*"]`` takes the d columns even when the file leaves them
zero, as DeePTB does.

*DeePTB's sign.* DeePTB 2.2.1 passes the table column to the Slater-Koster rotation of its ``nnsk``
models, whose parameters carry the sign ``(-1)^(l_a + l_b)`` (:mod:`eqtb.models.sk`): its blocks
are ``P B P`` with ``P = (-1)^l`` on every orbital -- the same spectrum (the bands agree to
1e-9 eV, ``tests/test_dftbsk.py``), but p (and f) orbitals of the opposite sign. eqtb keeps DFTB+'s
reading, the one whose orbitals have the phases of eqtb's (and DFT codes') real harmonics: the
overlap blocks of silicon from ``Si-Si.skf`` have the signs of ABACUS's overlaps of the same bonds.

**Interpolation**, DeePTB's: linear between the rows of the table (row k at ``k * gridDist``,
k = 1 .. nGridPoints - 1), zero below the first row and beyond the last. (DFTB+ interpolates with
8-point polynomials and lets the integrals go smoothly to zero within one Bohr past the last row;
DeePTB, and so eqtb, does neither.) When the tables of a basis have different grids, eqtb
interpolates each on its own grid; DeePTB first resamples all of them linearly onto one common
grid, so its numbers then differ slightly. With one grid, as in ``hBN_dftb``, they are the same.

**Onsite blocks**: the free atom's energies of ``A-A.skf`` on the diagonal (``Es``, ``Ep``, ``Ed``,
``Ef``); the onsite overlap is the identity. **Overlap** (``common_options.overlap``) from the S
tables of the same files, as the Hamiltonian from the H tables.

**Cutoff.** ``r_max`` (a radius, or per element / per bond type as :func:`eqtb.structure.pair_cutoffs`
reads it) when given: the graph holds the bonds up to r_max, as in DeePTB, and integrals of longer
bonds are zero. DeePTB 2.2.1 requires r_max (its own example ``hBN_dftb/input_dftb_env.json``
omits it and fails DeePTB's argcheck); without it eqtb takes, per bond type A-B, the last tabulated
distance of ``A-B.skf`` and ``B-A.skf``, beyond which the integrals are zero anyway.

The model has no trainable parameters: it predicts the Hamiltonian (not a density matrix) and is
two-centre (:class:`eqtb.models.base.Locality` 0). With an se2 environment (``embedding``,
``prediction``) it is the base of a :mod:`mix <eqtb.models.mix>` model, which multiplies its
integrals and onsite energies by learned factors (DeePTB's dftbsk + environment correction).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import torch

from eqtb.basis import Basis
from eqtb.data.skf import INTEGRALS, SHELL_LETTERS, SKFError, SKTable, read_skdata, skdata_cutoffs, write_skf
from eqtb.models.assembly import SKAssembler
from eqtb.models.base import Features, Locality, ModelError, OperatorModel, bond_chunks, register
from eqtb.models.inputs import ModelInputs
from eqtb.models.sk import onsite_pairs
from eqtb.nn.so2 import directed_frames
from eqtb.quantities import OVERLAP
from eqtb.structure import pair_cutoffs

__all__ = ["DftbSlaterKoster", "example_tables"]

#: number of integral columns of a table (:data:`eqtb.data.skf.INTEGRALS`)
_N_COLUMNS = 20


def _check_shells(basis: Basis) -> None:
    """:class:`ModelError` unless every element has at most one shell per angular momentum."""
    for element in basis.elements:
        repeated = [SHELL_LETTERS[ell] for ell, n in sorted(element.count.items()) if n > 1]
        if repeated:
            raise ModelError(f"dftbsk: {element.symbol} has several {'/'.join(repeated)} shells in the basis "
                             f"{basis.spec}; Slater-Koster tables hold one shell per angular momentum")


def _load_tables(skdata: str, symbols: list[str]) -> dict[tuple[str, str], SKTable]:
    try:
        tables = read_skdata(Path(skdata).expanduser(), symbols)
    except SKFError as err:
        raise ModelError(f"model_options.dftbsk.skdata: {err}") from None
    for (a, b), table in tables.items():
        if a == b and table.onsite is None:
            raise ModelError(f"model_options.dftbsk.skdata: {table.source} has no onsite energies")
    return tables


def _table_cutoffs(tables: dict[tuple[str, str], SKTable]) -> dict[str, float]:
    """``{"A-B": max(last distance of A-B, of B-A)}`` (Angstrom) for every pair of ``tables``."""
    return {f"{a}-{b}": max(t.cutoff, tables[b, a].cutoff) for (a, b), t in tables.items() if (b, a) in tables}


def _single(cutoffs: dict[str, float]):
    """One radius when every bond type has the same cutoff, else the dict."""
    first = next(iter(cutoffs.values()))
    return first if all(abs(v - first) < 1e-9 for v in cutoffs.values()) else cutoffs


@register
class DftbSlaterKoster(OperatorModel):
    """The ``dftbsk`` family (module docstring): ``skdata`` a folder of ``.skf`` files or DeePTB's
    ``.pth``; ``r_max`` the graph cutoff (Angstrom; None: the tables' range)."""

    family = "dftbsk"

    def __init__(self, basis: Basis, skdata: str, r_max=None, *, quantity: str = "hamiltonian",
                 overlap: bool = False):
        super().__init__()
        self.check_quantity(quantity)
        if quantity != "hamiltonian":
            raise ModelError(f"dftbsk: Slater-Koster tables give the Hamiltonian and the overlap, not the {quantity}")
        self.basis = Basis(basis)
        _check_shells(self.basis)
        self.quantity, self.has_overlap = quantity, overlap
        sym = self.basis.symbols
        T = len(sym)
        tables = _load_tables(skdata, sym)
        for element in self.basis.elements:
            table = tables[element.symbol, element.symbol]
            too_high = [s.name for s in element.shells if s.l > table.max_l]
            if too_high:
                raise ModelError(f"dftbsk: {table.source} has integrals up to l = {table.max_l}, the basis gives "
                                 f"{element.symbol} the shells {', '.join(too_high)}")
        self.r_max = r_max if r_max is not None else _single(_table_cutoffs(tables))
        try:
            cut = pair_cutoffs(self.r_max, sym)
        except ValueError as err:
            raise ModelError(f"model_options.dftbsk.r_max: {err}") from None
        f32 = torch.get_default_dtype()
        self.register_buffer("pair_cutoff", torch.as_tensor(cut.reshape(-1), dtype=f32), persistent=False)

        self.assembler = SKAssembler(self.basis, None, convention="sk")
        self.lmax = self.assembler.lmax
        files = [tables[a, b] for a in sym for b in sym]  # file f = x * T + y holds the pair (x, y)
        rows = max(len(t.distances) for t in files)
        grid = np.array([[t.spacing, len(t.distances)] for t in files])
        self.register_buffer("spacing", torch.as_tensor(grid[:, 0], dtype=f32), persistent=False)
        self.register_buffer("n_rows", torch.as_tensor(grid[:, 1], dtype=torch.long), persistent=False)
        self.register_buffer("h_table", self._stack(files, rows, overlap=False), persistent=False)
        if overlap:
            self.overlap_assembler = SKAssembler(self.basis, None, convention="sk")
            self.register_buffer("s_table", self._stack(files, rows, overlap=True), persistent=False)
        index, sign = self._gather_tables(T)
        self.register_buffer("gather_index", torch.as_tensor(index), persistent=False)
        self.register_buffer("gather_sign", torch.as_tensor(sign, dtype=f32), persistent=False)
        energies, place, identity = self._onsite_features(tables)
        self.register_buffer("onsite_energies", energies, persistent=False)
        self.register_buffer("pair_features", place, persistent=False)
        if overlap:
            self.register_buffer("onsite_identity", identity, persistent=False)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _stack(files: list[SKTable], rows: int, overlap: bool) -> torch.Tensor:
        """(n_files, rows + 1, 20) H (eV) or S tables, zero-padded (one extra zero row so that the
        row after the last exists)."""
        out = np.zeros((len(files), rows + 1, _N_COLUMNS))
        for f, t in enumerate(files):
            data = t.overlap if overlap else t.hamiltonian
            out[f, :len(data)] = data
        return torch.as_tensor(out, dtype=torch.get_default_dtype())

    def _gather_tables(self, T: int) -> tuple[np.ndarray, np.ndarray]:
        """(index, sign), each (T*T, n_integrals): for the ordered type pair p = x * T + y, where each
        sk integral of the 'all' pair layout sits among the 2 x 20 columns interpolated from the
        files x-y (0..19) and y-x (20..39) -- 40: zero, a shell the element does not have -- and
        its sign (module docstring)."""
        has = [set(e.shells) for e in self.basis.elements]
        entries = [(p.a, p.b, m) for p in self.basis.all_pairs for m in range(min(p.a.l, p.b.l) + 1)]
        index = np.full((T * T, len(entries)), 2 * _N_COLUMNS, dtype=np.int64)
        sign = np.zeros((T * T, len(entries)))
        for x in range(T):
            for y in range(T):
                for n, (a, b, m) in enumerate(entries):
                    if a not in has[x] or b not in has[y]:
                        continue
                    low, high, offset = (a.l, b.l, 0) if a.l <= b.l else (b.l, a.l, _N_COLUMNS)
                    name = f"{SHELL_LETTERS[low]}{SHELL_LETTERS[high]}{m}"
                    index[x * T + y, n] = offset + INTEGRALS.index(name)
                    sign[x * T + y, n] = 1.0 if a.l <= b.l else (-1.0) ** (a.l + b.l)
        return index, sign

    def _onsite_features(self, tables) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(T, K) onsite energies of each element's shells (the free atom's levels; K: the shells of
        the full basis, :func:`eqtb.models.sk.onsite_pairs`, one per l here), (K, onsite_dim) the
        features of a unit energy on each shell, and (T, onsite_dim) those of the onsite overlap
        (identity) of each element."""
        F = self.basis.full_norb
        T = self.basis.n_types
        pairs = onsite_pairs(self.basis)
        energies, place, identity = np.zeros((T, len(pairs))), np.zeros((len(pairs), F, F)), np.zeros((T, F, F))
        for k, (a, _) in enumerate(pairs):
            o = self.basis.shell_offset[a]
            place[k, o:o + a.dim, o:o + a.dim] = np.eye(a.dim)
        for t, element in enumerate(self.basis.elements):
            levels = tables[element.symbol, element.symbol].onsite
            for shell in element.shells:
                o = self.basis.shell_offset[shell]
                energies[t, pairs.index((shell, shell))] = levels[shell.l]
                identity[t, o:o + shell.dim, o:o + shell.dim] = np.eye(shell.dim)
        tr = self.assembler.onsite_transform
        f32 = torch.get_default_dtype()
        return (torch.as_tensor(energies, dtype=f32), tr.to_features(torch.as_tensor(place)).to(f32),
                tr.to_features(torch.as_tensor(identity)).to(f32))

    # ------------------------------------------------------------------ declarations
    @classmethod
    def from_options(cls, options: dict, basis: Basis, stats: dict | None = None, *,
                     quantity: str = "hamiltonian", overlap: bool = False) -> "DftbSlaterKoster":
        """From DeePTB's ``{"dftbsk": {"skdata": ..., "r_max": ...}}`` (validated); ``stats`` unused
        (nothing is learned)."""
        opts = options["dftbsk"]
        return cls(basis, opts["skdata"], opts.get("r_max"), quantity=quantity, overlap=overlap)

    @classmethod
    def cutoff_of(cls, options: dict):
        """``r_max`` when given, else ``{"A-B": range}`` of every table pair in ``skdata``."""
        opts = options["dftbsk"]
        if opts.get("r_max") is not None:
            return opts["r_max"]
        try:
            ranges = skdata_cutoffs(Path(opts["skdata"]).expanduser())
        except SKFError as err:
            raise ModelError(f"model_options.dftbsk.skdata: {err}") from None
        return {bond: max(r, ranges.get("-".join(bond.split("-")[::-1]), r)) for bond, r in ranges.items()}

    @classmethod
    def example_basis(cls, basis: Basis) -> Basis:
        """One shell per angular momentum of each element of ``basis`` (``"2s2p1d"`` -> ``"1s1p1d"``)."""
        return Basis({e.symbol: "".join(f"1{SHELL_LETTERS[ell]}" for ell in sorted(e.count))
                      for e in Basis(basis).elements})

    @classmethod
    def example_options(cls, basis: Basis) -> dict:
        """Tables made up for the elements of ``basis`` (:func:`example_tables`), no r_max."""
        return {"dftbsk": {"skdata": str(example_tables(Basis(basis).symbols))}}

    @property
    def locality(self) -> Locality:
        return Locality(0)

    def heads(self) -> dict:
        out = {self.quantity: self.assembler}
        if self.has_overlap:
            out[OVERLAP] = self.overlap_assembler
        return out

    # ------------------------------------------------------------------ integrals
    def _interpolate(self, table: torch.Tensor, files: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """(n, 20) columns of ``table`` (n_files, rows + 1, 20) for files ``files`` (n,) at bond lengths
        ``r`` (n,): linear between rows, zero outside the first .. last tabulated distance."""
        step = self.spacing.to(r)[files]
        last = self.n_rows[files] - 1
        u = r / step - 1.0  # row coordinate: row k at (k + 1) * spacing
        k = torch.clamp(torch.floor(u).long(), min=0)
        k = torch.minimum(k, last)
        t = (u - k.to(r))[:, None]
        tab = table.to(r)
        value = (1.0 - t) * tab[files, k] + t * tab[files, k + 1]
        inside = (u >= 0) & (u <= last.to(r))
        return value * inside[:, None]

    def bond_integrals(self, table: torch.Tensor, r: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        """(n, n_integrals) sk integrals (eV for H) of directed edges of ordered type pairs ``pair``
        (n,) = t_src * T + t_dst and lengths ``r`` (n,) (Angstrom); zero beyond the pair's r_max."""
        T = self.basis.n_types
        reverse = (pair % T) * T + pair // T
        columns = torch.cat([self._interpolate(table, pair, r), self._interpolate(table, reverse, r),
                             r.new_zeros(len(r), 1)], dim=1)
        inside = (r <= self.pair_cutoff.to(r)[pair])[:, None]
        return torch.gather(columns, 1, self.gather_index[pair]) * self.gather_sign.to(r)[pair] * inside

    def features(self, inputs: ModelInputs, edge_chunk: int | None = None, progress=None,
                 onsite_factor: torch.Tensor | None = None):
        """Interpolated integrals of every directed edge, chunk by chunk (any chunking is exact:
        two-centre); the onsite features in the last part. ``onsite_factor``: (N, K) factors of every
        atom's onsite energies (K: :func:`eqtb.models.sk.onsite_pairs`; the environment correction
        of :mod:`eqtb.models.mix`), None for none."""
        T = self.basis.n_types
        types = inputs.types
        chunks = bond_chunks(inputs.n_edges, edge_chunk)
        for n, sl in enumerate(chunks):
            vec = inputs.vectors[sl]
            src = torch.cat([inputs.i[sl], inputs.j[sl]])
            dst = torch.cat([inputs.j[sl], inputs.i[sl]])
            ti, tj = types[src], types[dst]
            pair = ti * T + tj
            r = vec.norm(dim=1).repeat(2)
            part = Features(sl, ti, tj, {self.quantity: self.bond_integrals(self.h_table, r, pair)},
                            directed_frames(vec, self.lmax))
            if self.has_overlap:
                part.offsite[OVERLAP] = self.bond_integrals(self.s_table, r, pair)
            if n == len(chunks) - 1:
                energies = self.onsite_energies.to(vec)[types]
                if onsite_factor is not None:
                    energies = energies * onsite_factor
                part.onsite[self.quantity] = energies @ self.pair_features.to(vec)
                if self.has_overlap:
                    part.onsite[OVERLAP] = self.onsite_identity.to(vec)[types]
            if progress is not None:
                progress.update(1)
            yield part

    def chunk_steps(self, inputs: ModelInputs, edge_chunk: int | None) -> int:
        return len(bond_chunks(inputs.n_edges, edge_chunk))


# ===================================================================== example tables
#: version of :func:`_example_table`, part of the name of the folders :func:`example_tables` reuses
_EXAMPLE_VERSION = 2


def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little"))


def _example_table(a: str, b: str, spacing: float, n_points: int) -> SKTable:
    """Made-up but smooth tables for the ordered pair a-b: every integral ``c exp(-r / 1.2)``
    times a switch to zero at the last row, with amplitudes c drawn from generators seeded by the
    pair -- the same for a-b and b-a where the two shells have the same l (as in real tables),
    different otherwise -- and onsite energies for a homonuclear pair."""
    same_l = np.array([name[0] == name[1] for name in INTEGRALS])
    r = spacing * np.arange(1, n_points)
    envelope = np.exp(-r / 1.2) * np.clip(1.0 - (r / r[-1]) ** 4, 0.0, None)
    tables = []
    for scale, kind in ((8.0, "H"), (0.8, "S")):
        both = _rng(f"{min(a, b)}-{max(a, b)}:{kind}").uniform(-scale, scale, size=20)
        ordered = _rng(f"{a}-{b}:{kind}").uniform(-scale, scale, size=20)
        tables.append(np.where(same_l, both, ordered)[None, :] * envelope[:, None])
    atom = {}
    if a == b:
        atom = {"onsite": np.sort(_rng(f"{a}:onsite").uniform(-15.0, 0.0, size=4)), "hubbard_u": np.full(4, 10.0),
                "occupations": np.array([2.0, 2.0, 0.0, 0.0]), "mass": 10.0}
    return SKTable(f"{a}-{b}.skf", spacing, n_points, *tables, 3, **atom)


def example_tables(symbols: list[str], spacing: float = 0.05, n_points: int = 90) -> Path:
    """A folder of made-up ``A-B.skf`` files (extended format, s to f) for every ordered pair of
    ``symbols``, for tests: integrals out to ``spacing x (n_points - 1)`` Angstrom (4.45 by
    default). Written once per set of symbols into the temporary directory and reused."""
    key = hashlib.sha256(f"{sorted(symbols)}|{spacing}|{n_points}|{_EXAMPLE_VERSION}".encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"eqtb-dftbsk-example-{key}"
    if not all((folder / f"{a}-{b}.skf").is_file() for a in symbols for b in symbols):
        folder.mkdir(parents=True, exist_ok=True)
        for a in symbols:
            for b in symbols:
                tmp = folder / f".{a}-{b}.skf.{np.random.default_rng().integers(1 << 30)}"
                write_skf(tmp, _example_table(a, b, spacing, n_points)).replace(folder / f"{a}-{b}.skf")
    return folder
