"""The operators eqtb learns and predicts, and their one vocabulary.

* ``"hamiltonian"`` -- the Kohn-Sham Hamiltonian H, in eV;
* ``"overlap"`` -- the overlap S of the atomic orbitals, dimensionless;
* ``"density_matrix"`` -- the density matrix D, dimensionless (electrons per orbital pair).

Every table that maps a quantity to something (a data flag of DeePTB's configs, a physical unit,
the unit its errors are reported in) lives here; file names of each dataset format stay with that
format's reader.
"""

from __future__ import annotations

HAMILTONIAN, OVERLAP, DENSITY_MATRIX = "hamiltonian", "overlap", "density_matrix"

#: the key of a model's onsite spin-orbit blocks ((N, 2F, 2F) complex, eV; :class:`eqtb.operator.Operator`
#: ``soc``) beside its Hamiltonian blocks: not a quantity of its own, a part of a spinful H
SPIN_ORBIT = "spin_orbit"

#: every quantity, in the order files and reports list them
QUANTITIES = (HAMILTONIAN, OVERLAP, DENSITY_MATRIX)

#: quantities a model can have as its main target (the overlap is an extra head)
MAIN_QUANTITIES = (HAMILTONIAN, DENSITY_MATRIX)

#: physical unit of the blocks
UNITS = {HAMILTONIAN: "eV", OVERLAP: "dimensionless", DENSITY_MATRIX: "dimensionless"}

#: unit of reported block errors (error x 1000)
ERROR_UNITS = {HAMILTONIAN: "meV", OVERLAP: "1e-3", DENSITY_MATRIX: "1e-3"}

#: ``data_options.<set>`` flag of DeePTB's configs that loads each quantity
DATA_FLAGS = {HAMILTONIAN: "get_Hamiltonian", OVERLAP: "get_overlap", DENSITY_MATRIX: "get_DM"}

#: short symbol used in tables and logs
SYMBOLS = {HAMILTONIAN: "H", OVERLAP: "S", DENSITY_MATRIX: "D"}
