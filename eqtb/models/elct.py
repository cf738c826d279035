"""ELCT: the equivariant local-coordinate transformer of H (or D) and S (DeePTB-style config key
``"method": "elct"``; the architecture of DeepH-2, Wang et al., arXiv:2401.17015, built from eqtb's
SO(2) blocks).

Notation as :mod:`eqtb.models.slem`: N atoms, 2E directed edges ``src -> dst``, hidden irreps H,
frame features of :mod:`eqtb.nn.so2` (the *local coordinates* of a directed edge: z along the bond,
where the rotation group of the bond is the abelian SO(2) and channels of every degree l mix freely
for each |m|, restricted only by mirror parity).

* **Embeddings.** Edge scalars ``s_ij``: an MLP of the radial basis of |r_ij| (smooth cutoff at the
  pair's r_max) and the one-hot types of both ends. Edge features ``e_ij`` (frame of i -> j, irreps
  H): a linear map of ``s_ij`` into the m = 0 component of every channel of natural parity
  (``p = (-1)^l``; the only components a function of (Z_i, Z_j, |r_ij|) can fill in the bond
  frame: ``e_ij`` is ``f(Z_i, Z_j, |r|) Y_l(r_ij)`` in the global frame), zero elsewhere. Vertex
  features ``h_i`` (global frame, irreps H): an embedding of Z_i in the even scalars.
* **ELCT block** k = 0..n_layers-1 (pre-norm residual; equivariant layer norms LN,
  :class:`eqtb.nn.norm.EquivariantLayerNorm`: even scalars centred, then one RMS of the per-l
  channel norms, every degree weighing alike; ``LN(h)`` rotated into the bond frames once per
  block and shared by the block's attention and the previous block's edge update):

  1. *vertex attention* (:class:`eqtb.nn.attention.VertexAttention`): for every edge i -> j an SO(2)
     convolution in the bond frame of ``[LN(e_ij), LN(h)_i, LN(h)_j]`` and ``s_ij`` gives a gated,
     radially modulated value and per head an invariant logit; ``h_i += W_O sum_j alpha_ij v_ij``
     rotated back, ``alpha`` a softmax over the edges of i (scatter ops), weighted by the smooth
     cutoff envelope of r_ij so that neighbours enter and leave continuously;
  2. *gated feed-forward* on vertices: ``h += W_2 gate(W_1 LN(h))``;
  3. *edge update*: ``e_ij += w(s_ij) . gate(SO2Linear([LN(e_ij), LN(h)_i, LN(h)_j], s_ij))``
     with the updated vertex features (``LN(e_ij)`` the one the attention read).

  Block 0 sees only m = 0 components (edge embedding, type-only vertices): its convolutions take
  the m = 0 group alone.

* **Heads.** Off-site features from ``[LN(e_ij), LN(h)_i, LN(h)_j]`` (last features) by an SO(2)
  convolution rotated to the global frame, onsite features from ``h_i`` (gated equivariant layer,
  then linear) plus the two-body sums of :class:`eqtb.models.heads.PairOnsite` (normalised by one
  over the square root of the training structures' mean neighbour count), both assembled by
  :class:`eqtb.models.assembly.IrrepsAssembler` (exact Hermitian blocks); the overlap by :class:`eqtb.models.heads.OverlapHead`. Radial basis and envelope are
  evaluated in float64 (:class:`eqtb.models.base.BondGeometry`).

**Locality.** The default, semi-local variant: ``h_i`` starts from atom i alone and each block's
attention reads the neighbours' features (``h_j`` and ``e_ij``), so after k blocks ``h_i`` depends
on the atoms within k bonds of i and ``e_ij`` on those within k bonds of i or j; every block of bond
(i, j) depends on exactly the atoms within ``n_layers`` bonds of i or of j:
:class:`eqtb.models.base.Locality` ``(n_layers)``. The strictly local variant
(``strictly_local: true``, as SLEM): the attention of vertex i reads only ``h_i``, ``s_ij`` and the
bond geometry, never a neighbour's hidden features, so ``h_i`` depends on the atoms within r_max of
i at any depth and a block on those within r_max of i or j: ``Locality(1)``, evaluated exactly in
independent chunks of bonds after vertex passes (``edge_chunk``; also the default variant with one
block, which is strictly local too).

Cost: per block, one SO(2) convolution of the attention (of ``[e, h_i, h_j]``, or of ``h_i`` alone
when strictly local) and one of the edge update, each a handful of dense matrix products over all
directed edges (one per |m|); vertex work is O(N).
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from eqtb.basis import Basis
from eqtb.models.assembly import IrrepsAssembler
from eqtb.models.base import (
    BondGeometry,
    Features,
    Locality,
    ModelError,
    OperatorModel,
    bond_chunks,
    check_hidden_irreps,
    chunk_geometry,
    register,
)
from eqtb.models.heads import OverlapHead, PairOnsite
from eqtb.models.inputs import ModelInputs
from eqtb.nn.attention import VertexAttention
from eqtb.nn.irreps import IrrepsLinear, gate_frame, gate_parts, n_gates
from eqtb.nn.norm import EquivariantLayerNorm
from eqtb.nn.radial import MLP, BesselBasis
from eqtb.nn.so2 import IrrepsLayout, SO2Linear


def _add(a: list, b: list) -> list:
    return [None if x is None else x + y for x, y in zip(a, b)]


def _m0(layout: IrrepsLayout) -> IrrepsLayout:
    """The frame layout of ``layout``'s m = 0 group alone: the first block's inputs (the edge
    embedding and type-only vertex features) have nothing else, so its convolutions skip m > 0."""
    out = IrrepsLayout()
    out.channels = [list(layout.channels[0])]
    return out


@register
class ELCT(BondGeometry, OperatorModel):
    """Equivariant local-coordinate transformer; see the module docstring.

    ``r_max``: float or per-element / per-bond dict (Angstrom). ``n_heads`` attention heads of
    ``head_dim`` invariant features each; ``strictly_local`` selects the variant; ``stats``,
    ``quantity``, ``overlap``, ``overlap_neurons`` as :class:`eqtb.models.slem.SLEM`. The
    remaining arguments are the ``elct`` embedding options of :class:`eqtb.config.ElctEmbedding`,
    whose defaults are the only ones (build with :meth:`from_options` or
    :func:`eqtb.models.model_from_options`)."""

    family = "elct"

    def __init__(self, basis: Basis, r_max, irreps_hidden: str, n_layers: int, *, n_heads: int, head_dim: int,
                 strictly_local: bool, n_radial_basis: int, cutoff_type: str, cutoff_p: float, latent_dim: int,
                 overlap: bool, overlap_neurons: list[int] | None, quantity: str, stats: dict | None = None):
        super().__init__()
        self._declare(basis, r_max, quantity, overlap)
        self.n_layers = n_layers
        self.strict = bool(strictly_local)
        T = self.basis.n_types
        hidden = check_hidden_irreps(irreps_hidden, self.basis)
        H = self.hidden = IrrepsLayout(hidden)
        self.flip = H.flip_signs()
        self.gated = IrrepsLayout(hidden + o3.Irreps(f"{n_gates(H)}x0e"))
        stats = stats or {}
        self.assembler = IrrepsAssembler(self.basis, stats.get(quantity))
        out_irreps = o3.Irreps(self.basis.irreps(self.basis.all_pairs))
        self.out_layout = IrrepsLayout(out_irreps)
        self.onsite_layout = IrrepsLayout(self.basis.irreps(self.basis.upper_pairs))
        self.lmax = max(H.lmax, out_irreps.lmax)

        # embeddings
        self.radial = BesselBasis(n_radial_basis, cutoff_type, cutoff_p)
        self.edge_mlp = MLP([n_radial_basis + 2 * T, latent_dim, latent_dim])
        self.register_buffer("natural", H.natural(), persistent=False)
        self.edge_embed = nn.Linear(latent_dim, H.sizes[0])
        self.type_embed = nn.Linear(T, H.n_scalars)
        even = [1.0 if p == 1 else 0.0 for p in H.parity.get(0, [])]
        self.register_buffer("even_scalars", torch.tensor(even), persistent=False)  # types are parity-even

        # ELCT blocks
        hhh = IrrepsLayout.concat(H, H, H)
        ng = n_gates(H)
        L = n_layers

        def norms(n):
            return nn.ModuleList([EquivariantLayerNorm(H) for _ in range(n)])

        # node_norm[k] normalises h^k, read in the bond frames by block k's attention and by block
        # k-1's edge update (k = L: by the off-site head); edge_norm[k] normalises e^k
        self.node_norm, self.edge_norm, self.ffn_norm = norms(L + 1), norms(L), norms(L)
        first = _m0(H) if self.strict else IrrepsLayout.concat(_m0(H), _m0(H), _m0(H))
        reads = [first] + [H if self.strict else hhh] * (L - 1)  # h_i, or [e_ij, h_i, h_j]
        self.attention = nn.ModuleList([VertexAttention(r, H, latent_dim, n_heads, head_dim) for r in reads])
        self.attention_out = nn.ModuleList([IrrepsLinear(H, H) for _ in range(L)])
        self.ffn_in = nn.ModuleList([IrrepsLinear(H, self.gated) for _ in range(L)])
        self.ffn_out = nn.ModuleList([IrrepsLinear(H, H) for _ in range(L)])
        ehh0 = IrrepsLayout.concat(_m0(H), H, H)
        self.edge_conv = nn.ModuleList([SO2Linear(ehh0 if k == 0 else hhh, H, latent_dim, ng) for k in range(L)])
        self.edge_mod = nn.ModuleList([nn.Linear(latent_dim, H.sizes[0]) for _ in range(L)])
        for lin in self.edge_mod:
            nn.init.zeros_(lin.weight)
            nn.init.ones_(lin.bias)

        # heads
        self.out_norm = EquivariantLayerNorm(H)
        self.edge_out = SO2Linear(hhh, self.out_layout, latent_dim)
        self.onsite_norm = EquivariantLayerNorm(H)
        self.onsite_hidden = IrrepsLinear(H, self.gated)
        self.node_out = IrrepsLinear(H, self.onsite_layout)
        self.pair_onsite = PairOnsite(self.onsite_layout, latent_dim)  # norm set by calibrate
        with torch.no_grad():  # an untrained model predicts the dataset means; first steps stay gentle
            for w in [self.edge_out.w0, *self.edge_out.wa, *self.edge_out.wb, *self.node_out.weights.values()]:
                w.mul_(0.01)
        self.overlap = (OverlapHead(self.basis, n_radial_basis, list(overlap_neurons), stats.get("overlap"))
                        if overlap else None)
        if self.overlap is not None:
            self.lmax = max(self.lmax, self.overlap.lmax)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_options(cls, options: dict, basis: Basis, stats: dict | None = None, *,
                     quantity: str = "hamiltonian", overlap: bool = False) -> "ELCT":
        """From ``{"embedding": {"method": "elct", ...}, "prediction": {"method": "e3tb", ...}}``
        (validated, defaults filled)."""
        emb, pred = options["embedding"], options["prediction"]
        if pred["method"] != "e3tb":
            raise ModelError(f"prediction method {pred['method']!r} cannot follow the elct embedding (use e3tb)")
        return cls(basis, emb["r_max"], emb["irreps_hidden"], int(emb["n_layers"]), n_heads=int(emb["n_heads"]),
                   head_dim=int(emb["head_dim"]), strictly_local=bool(emb["strictly_local"]),
                   n_radial_basis=int(emb["n_radial_basis"]), cutoff_type=emb["cutoff_type"],
                   cutoff_p=float(emb["PolynomialCutoff_p"]), latent_dim=int(emb["latent_dim"]), overlap=overlap,
                   overlap_neurons=pred["neurons"], quantity=quantity, stats=stats)

    @classmethod
    def cutoff_of(cls, options: dict):
        return options["embedding"]["r_max"]

    @classmethod
    def example_options(cls, basis: Basis) -> dict:
        """Two blocks of the default (semi-local) variant, r_max 3 A (nearest neighbours of Si and
        GaAs): a receptive field of 6 A that the 64-atom Si cell can test; two heads."""
        ls = {ell for e in basis.elements for ell in e.shell_l}
        hidden = "+".join(f"4x{ell}{'e' if ell % 2 == 0 else 'o'}" for ell in range(2 * max(ls) + 1))
        return {"embedding": {"method": "elct", "r_max": 3.0, "irreps_hidden": hidden, "n_layers": 2,
                              "n_heads": 2, "head_dim": 4, "latent_dim": 16},
                "prediction": {"method": "e3tb", "neurons": [16]}}

    # ------------------------------------------------------------------ declarations
    @property
    def locality(self) -> Locality:
        return Locality(1 if self.strict else self.n_layers)

    def heads(self) -> dict:
        out = {self.quantity: self.assembler}
        if self.overlap is not None:
            out["overlap"] = self.overlap.assembler
        return out

    # ------------------------------------------------------------------ geometry
    # ------------------------------------------------------------------ stages
    def _edge_scalars(self, radial, ti, tj):
        T = self.basis.n_types
        oh = nn.functional.one_hot
        return self.edge_mlp(torch.cat([radial, oh(ti, T).to(radial), oh(tj, T).to(radial)], dim=1))

    def _embed_edges(self, s):
        """Frame features (m = 0 of the natural-parity channels from the edge scalars; m > 0 zero)."""
        e0 = self.edge_embed(s) * self.natural
        return [e0] + [s.new_zeros((s.shape[0], 2, c)) for c in self.hidden.sizes[1:]]

    def _embed_types(self, types, like):
        h = self.hidden.zeros(len(types), like)
        onehot = nn.functional.one_hot(types, self.basis.n_types).to(like)
        h[0] = h[0] + (self.type_embed(onehot) * self.even_scalars).unsqueeze(1)
        return h

    def _bond_frames(self, h, src, D, n_bonds):
        """Vertex features of both ends of the directed edges ``[fwd; rev]`` of ``n_bonds`` bonds in
        the edge frames: the far end's are the near end's of the reverse edge, sign-flipped
        (:func:`eqtb.nn.so2.directed_frames`)."""
        hf_src = self.hidden.to_frame([None if p is None else p[src] for p in h], D)
        signs = [g.to(hf_src[0]) for g in self.flip]
        return hf_src, [torch.roll(x, n_bonds, 0) * g for x, g in zip(hf_src, signs)]

    def _attention_input(self, k, en, hf_src, hf_dst):
        """What the attention of block k reads: block 0 the m = 0 group only (nothing else there)."""
        if k == 0:
            return hf_src[:1] if self.strict else [en[:1], hf_src[:1], hf_dst[:1]]
        return hf_src if self.strict else [en, hf_src, hf_dst]

    def _vertex_update(self, k, h, acc):
        """Attention output projected and added; then the gated feed-forward, residually."""
        h = _add(h, self.attention_out[k](self.attention[k].finish(acc)))
        return _add(h, self.ffn_out[k](self._gate(self.ffn_in[k](self.ffn_norm[k](h)))))

    def _edge_update(self, k, e, en, hf_src, hf_dst, s):
        y, g = self.edge_conv[k]([en[:1] if k == 0 else en, hf_src, hf_dst], s)
        return _add(e, gate_frame(y, g, self.hidden, self.edge_mod[k](s)))

    def _edge_output(self, e, hf_src, hf_dst, s, D):
        y, _ = self.edge_out([self.out_norm.frame(e), hf_src, hf_dst], s)
        return self.out_layout.merge(self.out_layout.from_frame(y, D))

    def _onsite_output(self, h, pair: list):
        """Flat onsite features: the gated readout of ``h`` plus the two-body sums ``pair``
        (:class:`eqtb.models.heads.PairOnsite`)."""
        own = self.node_out(self._gate(self.onsite_hidden(self.onsite_norm(h))))
        return self.onsite_layout.merge([a if a is None else a + b for a, b in zip(own, pair)])

    def _gate(self, u):
        """Gated nonlinearity of features in the gated layout (hidden + trailing gate scalars)."""
        nh = self.hidden.n_scalars
        return gate_parts([u[0][:, :, :nh]] + u[1:], u[0][:, 0, nh:], self.hidden)

    def _add_overlap(self, part: Features, radial, types=None) -> None:
        if self.overlap is None:
            return
        part.offsite["overlap"] = self.overlap.integrals(radial, part.ti, part.tj)
        if types is not None:
            part.onsite["overlap"] = self.overlap.onsite_features[types]

    @torch.no_grad()
    def calibrate(self, inputs: list[ModelInputs]) -> None:
        """Rescale the last layer of the edge MLP so that the edge scalars have zero mean and unit
        spread over the training structures (weights only: the model stays a plain function of its
        parameters). Everything downstream is layer-normalised."""
        last = self.edge_mlp[-1]
        e = torch.cat([self._edge_scalars(self.geometry(x)["radial"], x.types[x.src], x.types[x.dst])
                       for x in inputs])
        mu, sd = e.mean(0), e.std(0).clamp(min=1e-3) if len(e) > 1 else torch.ones(e.shape[1])
        last.weight.div_(sd[:, None])
        last.bias.sub_(mu).div_(sd)
        degree = sum(x.n_edges for x in inputs) * 2 / max(1, sum(x.n_atoms for x in inputs))
        self.pair_onsite.norm.fill_(max(degree, 1.0) ** -0.5)  # two-body onsite sums: 1 / sqrt(neighbours)

    # ------------------------------------------------------------------ features
    def features(self, inputs: ModelInputs, edge_chunk: int | None = None, progress=None):
        """Raw outputs (:class:`eqtb.models.base.Features`): off-site irreps features of the directed
        edges, onsite features of the atoms, the overlap head's integrals. ``edge_chunk``: about this
        many directed edges at a time when the model is strictly local (:meth:`_features_chunked`;
        the blocks equal the unchunked ones to round-off), ignored otherwise. ``progress``: told
        ``update(n)``, :meth:`chunk_steps` in all."""
        E = inputs.n_edges
        if edge_chunk and edge_chunk < 2 * E and self.locality.strictly_local:
            yield from self._features_chunked(inputs, edge_chunk, progress)
            return
        geo = self.geometry(inputs)
        types, src, dst = inputs.types, inputs.src, inputs.dst
        N = inputs.n_atoms
        ti, tj = types[src], types[dst]
        D, radial, env = geo["D"], geo["radial"], geo["envelope"]
        s = self._edge_scalars(radial, ti, tj)
        e = self._embed_edges(s)
        h = self._embed_types(types, radial)
        pair = self.pair_onsite.add(None, s, D, src, N, env)
        hf_src, hf_dst = self._bond_frames(self.node_norm[0](h), src, D, E)
        for k in range(self.n_layers):
            en = self.edge_norm[k].frame(e)
            att = self.attention[k]
            acc = att.accumulate(att.start(N, radial), self._attention_input(k, en, hf_src, hf_dst), s, src, D, env)
            h = self._vertex_update(k, h, acc)
            hf_src, hf_dst = self._bond_frames(self.node_norm[k + 1](h), src, D, E)
            e = self._edge_update(k, e, en, hf_src, hf_dst, s)
        part = Features(slice(0, E), ti, tj, {self.quantity: self._edge_output(e, hf_src, hf_dst, s, D)}, D,
                        {self.quantity: self._onsite_output(h, pair)})
        self._add_overlap(part, radial, types)
        if progress is not None:
            progress.update(self.chunk_steps(inputs, None))
        yield part

    def chunk_steps(self, inputs: ModelInputs, edge_chunk: int | None) -> int:
        E = inputs.n_edges
        if not edge_chunk or edge_chunk >= 2 * E or not self.locality.strictly_local:
            return 1
        return (self.n_layers + 1) * len(bond_chunks(E, edge_chunk))

    def _features_chunked(self, inputs: ModelInputs, edge_chunk: int, progress=None):
        """The same features in chunks of canonical bonds (both directions of a bond in one chunk):
        per block, one vertex pass over the chunks (the attention sums accumulated online, the
        vertex update once all chunks are in), then every chunk through the edge updates and the
        heads. Exact for a strictly local model: its vertex attention never reads edge features
        beyond the embedding (strictly local variant: none; default variant with one block: the
        embedding, recomputed per chunk). Geometry is kept per chunk."""
        assert self.locality.strictly_local
        types = inputs.types
        N = inputs.n_atoms
        chunks = bond_chunks(inputs.n_edges, edge_chunk)
        geos = chunk_geometry(self, inputs, ("elct_chunk_geometry", chunks[0].stop), chunks,
                              lambda sl: self._bond_geometry(inputs, sl))

        def local(sl, geo):
            src = torch.cat([inputs.i[sl], inputs.j[sl]])
            dst = torch.cat([inputs.j[sl], inputs.i[sl]])
            return src, types[src], types[dst], self._edge_scalars(geo["radial"], types[src], types[dst])

        def tick():
            if progress is not None:
                progress.update(1)

        like = geos[0]["radial"]
        hs = [self._embed_types(types, like)]
        pair = None
        for sl, geo in zip(chunks, geos):
            src, _, _, s = local(sl, geo)
            pair = self.pair_onsite.add(pair, s, geo["D"], src, N, geo["envelope"])
        for k in range(self.n_layers):
            hn = self.node_norm[k](hs[-1])
            att = self.attention[k]
            acc = att.start(N, like)
            for sl, geo in zip(chunks, geos):
                src, _, _, s = local(sl, geo)
                hf_src, hf_dst = self._bond_frames(hn, src, geo["D"], sl.stop - sl.start)
                en = None if self.strict else self.edge_norm[k].frame(self._embed_edges(s))  # k == 0 here
                acc = att.accumulate(acc, self._attention_input(k, en, hf_src, hf_dst), s, src, geo["D"],
                                     geo["envelope"])
                tick()
            hs.append(self._vertex_update(k, hs[-1], acc))
        hn = [self.node_norm[k + 1](hs[k + 1]) for k in range(self.n_layers)]
        for n, (sl, geo) in enumerate(zip(chunks, geos)):
            src, ti, tj, s = local(sl, geo)
            D, nb = geo["D"], sl.stop - sl.start
            e = self._embed_edges(s)
            for k in range(self.n_layers):
                hf_src, hf_dst = self._bond_frames(hn[k], src, D, nb)
                e = self._edge_update(k, e, self.edge_norm[k].frame(e), hf_src, hf_dst, s)
            part = Features(sl, ti, tj, {self.quantity: self._edge_output(e, hf_src, hf_dst, s, D)}, D)
            last = n == len(chunks) - 1
            if last:
                part.onsite[self.quantity] = self._onsite_output(hs[-1], pair)
            self._add_overlap(part, geo["radial"], types if last else None)
            tick()
            yield part
