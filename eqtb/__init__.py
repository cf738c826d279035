"""eqtb: E(3)-equivariant learning of DFT Hamiltonian, overlap and density matrices in atomic-orbital
bases, and electronic structure from them at scale.

Units inside eqtb: Angstrom, eV, fractional k-points. Orbital order: m = -l..l real harmonics without
the Condon-Shortley phase (p = y, z, x), as in DeePTB. See README.md.
"""

__version__ = "0.1.0"

from eqtb.basis import Basis  # noqa: E402,F401
from eqtb.structure import Graph, Structure, build_graph  # noqa: E402,F401


def load(path, device="cpu"):
    """Load a trained model for prediction: an :class:`eqtb.predict.Predictor` (see that module)."""
    from eqtb.predict import Predictor

    return Predictor.load(path, device)
