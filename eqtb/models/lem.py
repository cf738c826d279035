"""LEM: DeePTB's local equivariant model of H (or D) and S, semi-local.

The stages are SLEM's (:mod:`eqtb.models.slem`, notation there): edge scalars ``s_ij``, initial node
features ``h_i = sum_j w(s_ij) Y(r_ij)`` plus a type embedding, edge stages (an SO(2) convolution of
``[e_ij, h_i, h_j]`` in the bond frame, gated, modulated by ``s_ij``, added residually), the node
update (an equivariant linear map of the summed messages and of ``h_i``, gated, residual) and the
heads. What makes it LEM, as in DeePTB's ``lem`` embedding, is the message a node receives:

* **Messages read the neighbour.** Each of the ``n_layers`` layers first updates the edge features
  ``e_ij`` from both ends' node features, then every atom i sums over its neighbours j the message
  ``m_ij = env(r_ij) w_k(s_ij) . gate(SO2Linear([e_ij, h_j]))`` rotated back from the frame of i->j:
  it reads the neighbour's hidden features (``h_j`` directly and through ``e_ij``), where SLEM's
  message reads ``h_i`` alone. ``env`` is the smooth cutoff envelope of the radial basis
  (polynomial or cosine, 1 at r = 0, 0 with its derivatives at the pair's r_max) and ``w_k`` a
  learned linear function of the edge scalars: the learnable distance weighting that makes a
  neighbour crossing the cutoff sphere enter smoothly.
* **Receptive field.** ``h_i`` starts as a function of the atoms within r_max of i (one hop of the
  bond graph); each layer adds one hop: after ``n_layers`` layers ``h_i`` depends on the atoms at
  most ``n_layers + 1`` bonds away from i. The heads read the last ``[e_ij, h_i, h_j]`` (off-site)
  and ``h_i`` (onsite), so every block of bond (i, j) depends on exactly the atoms within
  ``n_layers + 1`` bonds of i or of j -- :class:`eqtb.models.base.Locality` ``(n_layers + 1)``,
  atoms within ``(n_layers + 1) x r_max``. (DeePTB's ``lem`` with the same ``n_layers`` has the same
  receptive field for its onsite blocks, one hop less for its off-site ones.)

Layer schedule (DeePTB's: an edge update, then a node update reading the updated edges, per layer):
``n_layers`` edge stages and ``n_layers`` node updates, against SLEM's ``n_layers + 1`` edge stages
for the same ``n_layers``; at equal options an epoch costs about what SLEM's does. Every stage is
a handful of dense matrix products over all directed edges. Node features depend on edge features
of the whole receptive field, so there is no exact evaluation in independent chunks of bonds:
:meth:`LEM.features` ignores ``edge_chunk`` (the predictor does not chunk a model that is not
strictly local).
"""

from __future__ import annotations

from torch import nn

from eqtb.models.base import Features, Locality, register
from eqtb.models.inputs import ModelInputs
from eqtb.models.slem import SLEM
from eqtb.nn.irreps import gate_frame, n_gates
from eqtb.nn.so2 import IrrepsLayout, SO2Linear


@register
class LEM(SLEM):
    """Semi-local equivariant model; see the module docstring. Arguments as :class:`SLEM`'s (the
    ``lem`` embedding has the keys of ``slem``, :class:`eqtb.config.LemEmbedding`); build with
    :meth:`from_options` or :func:`eqtb.models.model_from_options`."""

    family = "lem"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        L = self.n_layers
        latent_dim = self.edge_mlp[-1].out_features
        # SLEM's last edge stage is LEM's off-site head input: n_layers edge stages, not n_layers + 1
        del self.edge_conv[L]
        del self.edge_mod[L]
        # node messages read [e_ij, h_j] (SLEM's read h_i) and are gated
        ehj = IrrepsLayout.concat(self.hidden, self.hidden)
        self.node_conv = nn.ModuleList([SO2Linear(ehj, self.hidden, latent_dim, n_gates(self.hidden))
                                        for _ in range(L)])

    @classmethod
    def example_options(cls, basis) -> dict:
        """SLEM's example with one LEM layer and r_max 3 A (nearest neighbours of Si and GaAs): a
        receptive field of 6 A that the 64-atom Si cell can test."""
        options = super().example_options(basis)
        options["embedding"].update(method="lem", r_max=3.0, n_layers=1)
        return options

    @property
    def locality(self) -> Locality:
        return Locality(self.n_layers + 1)

    # ------------------------------------------------------------------ stages
    def _neighbour_message(self, k, e, hf_dst, s, env, D):
        """Parts (2E, 2l+1, n_l) of the message of layer k along every directed edge i->j, to be
        summed onto i: gated SO(2) convolution of ``[e_ij, h_j]`` (bond frame), weighted channel by
        channel by ``env(r_ij) w_k(s_ij)``, rotated to the global frame."""
        y, g = self.node_conv[k]([e, hf_dst], s)
        return self.hidden.from_frame(gate_frame(y, g, self.hidden, self.node_mod[k].lin(s) * env), D)

    # ------------------------------------------------------------------ features
    def features(self, inputs: ModelInputs, edge_chunk: int | None = None, progress=None):
        """Raw outputs of every bond and atom in one part (:class:`eqtb.models.base.Features`);
        ``edge_chunk`` is ignored (see the module docstring)."""
        geo = self.geometry(inputs)
        types, src, dst = inputs.types, inputs.src, inputs.dst
        N, E = inputs.n_atoms, inputs.n_edges
        ti, tj = types[src], types[dst]
        D, radial, env = geo["D"], geo["radial"], geo["envelope"]
        s = self._edge_scalars(radial, ti, tj)
        h = self.hidden.zeros(N, radial)
        self._scatter(h, src, self._init_message(s, D, env))
        h = self._embed_types(h, types)
        pair = self.pair_onsite.add(None, s, D, src, N, env)
        e = None
        for k in range(self.n_layers):
            hf_src, hf_dst = self._bond_frames(h, src, D, E)
            e = self._edge_stage(k, e, hf_src, hf_dst, s)
            msg = self.hidden.zeros(N, radial)
            self._scatter(msg, src, self._neighbour_message(k, e, hf_dst, s, env, D))
            h = self._node_update(k, h, msg)
        hf_src, hf_dst = self._bond_frames(h, src, D, E)
        part = Features(slice(0, E), ti, tj, {self.quantity: self._edge_output(e, hf_src, hf_dst, s, D)}, D,
                        {self.quantity: self._onsite_features_flat(h, pair)})
        self._add_overlap(part, radial, types)
        if progress is not None:
            progress.update(1)
        yield part

    def chunk_steps(self, inputs: ModelInputs, edge_chunk: int | None) -> int:
        return 1
