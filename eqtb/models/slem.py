"""SLEM: the strictly local equivariant model of H (or D) and S.

Notation: N atoms, E canonical bonds, 2E directed edges ``src -> dst`` (:mod:`eqtb.models.inputs`),
hidden irreps ``H`` (e.g. ``"32x0e+32x1o+16x2e"``), frame features as in :mod:`eqtb.nn.so2`.

* **Edge scalars** ``s_e``: an MLP of the radial basis of |r_e| (smooth cutoff at the pair's r_max)
  and the one-hot types of both ends. Two-centre quantities only.
* **Node features** ``h_i`` (global frame, irreps H). Initialised as ``sum_j env(r_ij) w(s_ij) Y(r_ij)``
  plus a type embedding; each of the ``n_layers`` updates sums over i's neighbours an SO(2)
  convolution of ``h_i`` itself in the frame of each bond i->j, modulated channel-wise by
  ``env(r_ij) s_ij``. ``env`` is the radial basis' smooth cutoff, zero at r_max: the edge scalars
  ``s_ij`` do not vanish there, and a neighbour crossing the cutoff sphere would otherwise make
  every sum jump (by ~5 % of the largest block with random weights, ``revision`` 1). A node update
  never reads a neighbour's hidden features, only its type and position: ``h_i`` depends on the
  atoms within r_max of i and nothing else, at any depth (strict locality).
* **Edge features** ``e_ij`` (frame of the directed edge, irreps H): at each layer an SO(2)
  convolution of ``[e_ij, h_i, h_j]`` (node features rotated into the bond frame) with ``s_ij``
  appended to the invariant inputs, a gated nonlinearity and a channel-wise radial modulation, added
  residually. ``e_ij`` depends only on atoms within r_max of i or of j.
* **Heads**: onsite features from ``h_i`` by a gated equivariant layer and a linear map, plus the
  two-body sums ``sum_j w(s_ij) Y_L(r_ij)`` of :class:`eqtb.models.heads.PairOnsite` (the bulk of an
  onsite block in a solid, which the few onsite blocks of a dataset teach poorly through the node
  layers; enveloped as the node sums); off-site features from the last ``[e_ij, h_i, h_j]`` by an SO(2) convolution, rotated
  back to the lab frame; both assembled by :class:`eqtb.models.assembly.IrrepsAssembler`. Overlap from :class:`eqtb.models.heads.OverlapHead`.

The costly work is a handful of dense matrix products over all directed edges per layer (one per
|m|), with edge dependence entering only through elementwise modulation. Since node features never
depend on edge features, :meth:`SLEM.forward` can process the edges in independent chunks after a
node pass (``edge_chunk``): memory stays bounded for any structure size.
"""

from __future__ import annotations

import math

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
    by_rows,
    check_hidden_irreps,
    chunk_geometry,
    register,
)
from eqtb.models.heads import OverlapHead, PairOnsite
from eqtb.models.inputs import ModelInputs
from eqtb.nn.irreps import IrrepsLinear, gate_frame, gate_parts, n_gates
from eqtb.nn.radial import MLP, BesselBasis
from eqtb.nn.so2 import IrrepsLayout, SO2Linear


class _EdgeModulation(nn.Module):
    """Channel-wise multiplication of frame features by a linear function of the edge scalars;
    :meth:`forward` also by the cutoff envelope ``env`` (E, 1) of each edge."""

    def __init__(self, n_scalars: int, layout: IrrepsLayout):
        super().__init__()
        self.lin = nn.Linear(n_scalars, layout.sizes[0])
        nn.init.zeros_(self.lin.weight)
        nn.init.ones_(self.lin.bias)

    def forward(self, x, s, env):
        w = self.lin(s) * env
        return [x[0] * w] + [xm * w[:, w.shape[1] - xm.shape[2]:].unsqueeze(1) for xm in x[1:]]

    def gated(self, x, gates, s, layout: IrrepsLayout):
        """:func:`eqtb.nn.irreps.gate_frame` followed by this modulation, in one pass."""
        return gate_frame(x, gates, layout, self.lin(s))


@register
class SLEM(BondGeometry, OperatorModel):
    """Strictly local equivariant model; see the module docstring.

    ``r_max``: float or per-element / per-bond dict (Angstrom), as DeePTB's embedding r_max.
    ``stats``: dict quantity -> :class:`eqtb.data.stats.OperatorStats` for the output normalisation
    (None: unit scale, zero shift). ``quantity``: the operator predicted by the main head
    ("hamiltonian" or "density_matrix"); ``overlap`` adds the two-centre overlap head (an MLP of
    hidden widths ``overlap_neurons``). The other arguments are the ``slem`` embedding options of
    :class:`eqtb.config.SlemEmbedding`, whose defaults are the only ones (build with
    :meth:`from_options` or :func:`eqtb.models.model_from_options`)."""

    def __init__(self, basis: Basis, r_max, irreps_hidden: str, n_layers: int, avg_num_neighbors: float, *,
                 n_radial_basis: int, cutoff_type: str, cutoff_p: float, latent_dim: int, res_update_ratio: float,
                 overlap: bool, overlap_neurons: list[int] | None, quantity: str, stats: dict | None = None):
        super().__init__()
        self._declare(basis, r_max, quantity, overlap)
        self.n_layers = n_layers
        T = self.basis.n_types
        hidden = check_hidden_irreps(irreps_hidden, self.basis)
        self.hidden = IrrepsLayout(hidden)
        self.flip = self.hidden.flip_signs()  # see _bond_frames
        self.gated = IrrepsLayout(hidden + o3.Irreps(f"{n_gates(self.hidden)}x0e"))
        self.norm = 1.0 / math.sqrt(avg_num_neighbors)
        self.res = res_update_ratio
        stats = stats or {}
        self.assembler = IrrepsAssembler(self.basis, stats.get(quantity))
        out_irreps = o3.Irreps(self.basis.irreps(self.basis.all_pairs))
        self.out_layout = IrrepsLayout(out_irreps)
        self.onsite_layout = IrrepsLayout(self.basis.irreps(self.basis.upper_pairs))
        self.lmax = max(self.hidden.lmax, out_irreps.lmax)

        self.radial = BesselBasis(n_radial_basis, cutoff_type, cutoff_p)
        self.edge_mlp = MLP([n_radial_basis + 2 * T, latent_dim, latent_dim])
        self.type_embed = nn.Linear(T, self.hidden.n_scalars)
        even = [1.0 if p == 1 else 0.0 for p in self.hidden.parity.get(0, [])]
        self.register_buffer("even_scalars", torch.tensor(even), persistent=False)  # types are parity-even
        self.register_buffer("natural", self.hidden.natural(), persistent=False)
        self.init_weights = nn.Linear(latent_dim, self.hidden.sizes[0])

        hh = IrrepsLayout.concat(self.hidden, self.hidden)
        hhh = IrrepsLayout.concat(self.hidden, self.hidden, self.hidden)
        ng = n_gates(self.hidden)
        self.node_conv = nn.ModuleList([SO2Linear(self.hidden, self.hidden, latent_dim) for _ in range(n_layers)])
        self.node_mod = nn.ModuleList([_EdgeModulation(latent_dim, self.hidden) for _ in range(n_layers)])
        self.node_lin = nn.ModuleList([IrrepsLinear(self.hidden, self.gated) for _ in range(n_layers)])
        self.node_self = nn.ModuleList([IrrepsLinear(self.hidden, self.gated) for _ in range(n_layers)])
        self.edge_conv = nn.ModuleList([SO2Linear(hh, self.hidden, latent_dim, ng)]
                                       + [SO2Linear(hhh, self.hidden, latent_dim, ng) for _ in range(n_layers)])
        self.edge_mod = nn.ModuleList([_EdgeModulation(latent_dim, self.hidden) for _ in range(n_layers + 1)])
        self.edge_out = SO2Linear(hhh, self.out_layout, latent_dim)
        self.onsite_hidden = IrrepsLinear(self.hidden, self.gated)
        self.node_out = IrrepsLinear(self.hidden, self.onsite_layout)
        self.pair_onsite = PairOnsite(self.onsite_layout, latent_dim, self.norm)
        with torch.no_grad():  # an untrained model predicts the dataset means; first steps stay gentle
            for w in [self.edge_out.w0, *self.edge_out.wa, *self.edge_out.wb, *self.node_out.weights.values()]:
                w.mul_(0.01)
        self.overlap = (OverlapHead(self.basis, n_radial_basis, list(overlap_neurons), stats.get("overlap"))
                        if overlap else None)
        if self.overlap is not None:
            self.lmax = max(self.lmax, self.overlap.lmax)

    family = "slem"
    revision = 2
    revisions = {2: "neighbour sums multiplied by the cutoff envelope, so that atoms enter and leave them "
                    "continuously at r_max; revision 1 had none"}

    @classmethod
    def from_options(cls, options: dict, basis: Basis, stats: dict | None = None, *,
                     quantity: str = "hamiltonian", overlap: bool = False) -> "SLEM":
        """From DeePTB's ``{"embedding": {"method": "slem", ...}, "prediction": {"method": "e3tb",
        ...}}`` (validated, defaults filled)."""
        emb, pred = options["embedding"], options["prediction"]
        if pred["method"] != "e3tb":
            raise ModelError(f"prediction method {pred['method']!r} cannot follow the slem embedding (use e3tb)")
        return cls(basis, emb["r_max"], emb["irreps_hidden"], int(emb["n_layers"]), float(emb["avg_num_neighbors"]),
                   n_radial_basis=int(emb["n_radial_basis"]), cutoff_type=emb["cutoff_type"],
                   cutoff_p=float(emb["PolynomialCutoff_p"]), latent_dim=int(emb["latent_dim"]),
                   res_update_ratio=float(emb["res_update_ratios"]), overlap=overlap,
                   overlap_neurons=pred["neurons"], quantity=quantity, stats=stats)

    @classmethod
    def cutoff_of(cls, options: dict):
        return options["embedding"]["r_max"]

    @classmethod
    def example_options(cls, basis: Basis) -> dict:
        ls = {ell for e in basis.elements for ell in e.shell_l}
        hidden = "+".join(f"4x{ell}{'e' if ell % 2 == 0 else 'o'}" for ell in range(2 * max(ls) + 1))
        return {"embedding": {"method": "slem", "r_max": 4.0, "irreps_hidden": hidden, "n_layers": 2,
                              "avg_num_neighbors": 10.0, "latent_dim": 16},
                "prediction": {"method": "e3tb", "neurons": [16]}}

    @property
    def locality(self) -> Locality:
        return Locality(1)

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

    @torch.no_grad()
    def calibrate(self, inputs: list[ModelInputs]) -> None:
        """Data-dependent initialisation from training structures: rescale the last layer of the
        edge MLP so the edge scalars have zero mean and unit spread over the data, then the
        initial node features so that their invariants have zero mean (per element, through the
        type embedding) and every channel unit spread. Atoms in a solid see ~100 neighbours, so raw
        neighbour sums vary by < 1 % from atom to atom; without this the network would have to
        resolve that variation on top of a large constant. Changes weights only: the model stays a
        plain function of its parameters."""
        last = self.edge_mlp[-1]
        e = torch.cat([self._edge_scalars(self.geometry(x)["radial"], x.types[x.src], x.types[x.dst])
                       for x in inputs])
        mu, sd = e.mean(0), e.std(0).clamp(min=1e-3) if len(e) > 1 else torch.ones(e.shape[1])
        last.weight.div_(sd[:, None])
        last.bias.sub_(mu).div_(sd)
        hs, types = [], []
        for x in inputs:
            geo = self.geometry(x)
            h = self.hidden.zeros(x.n_atoms, geo["radial"])
            s = self._edge_scalars(geo["radial"], x.types[x.src], x.types[x.dst])
            self._scatter(h, x.src, self._init_message(s, geo["D"], geo["envelope"]))
            hs.append(h)
            types.append(x.types)
        types = torch.cat(types)
        k = 0
        for l in self.hidden.ls:
            v = torch.cat([h[l] for h in hs])  # (N, 2l+1, n_l)
            n = v.shape[2]
            if l == 0:
                self.type_embed.bias.zero_()
                for t in torch.unique(types):
                    self.type_embed.weight[:, t] = -v[types == t, 0].mean(0)
                sd = v[:, 0].std(0) if len(v) > 1 else torch.ones(n)
            else:
                sd = v.pow(2).mean(dim=(0, 1)).sqrt()
            sd = sd.clamp(min=1e-3)
            self.init_weights.weight[k:k + n] /= sd[:, None]
            self.init_weights.bias[k:k + n] /= sd
            if l == 0:
                self.type_embed.weight /= sd[:, None]
                self.type_embed.bias /= sd
            k += n

    def _init_message(self, s, D, env):
        """Parts (E, 2l+1, n_l) of sum_j env(r_ij) w(s_ij) Y_l(r_ij) / sqrt(avg_num_neighbors)."""
        return self.hidden.along_axis(self.init_weights(s) * env * self.natural * self.norm, D)

    def _node_message(self, k, hf_src, s, D, env):
        y, _ = self.node_conv[k](hf_src, s)
        return self.hidden.from_frame(self.node_mod[k](y, s, env), D)

    def _node_update(self, k, h, msg):
        u = [None if a is None else a + b for a, b in
             zip(self.node_lin[k]([None if x is None else x * self.norm for x in msg]), self.node_self[k](h))]
        new = self._gate(u)
        return [None if a is None else torch.lerp(b, a, self.res) for a, b in zip(h, new)]

    def _edge_stage(self, k, e, hf_src, hf_dst, s):
        y, g = self.edge_conv[k]([hf_src, hf_dst] if e is None else [e, hf_src, hf_dst], s)
        y = self.edge_mod[k].gated(y, g, s, self.hidden)
        return y if e is None else [torch.lerp(b, a, self.res) for a, b in zip(e, y)]

    def _edge_output(self, e, hf_src, hf_dst, s, D):
        y, _ = self.edge_out([e, hf_src, hf_dst], s)
        return self.out_layout.merge(self.out_layout.from_frame(y, D))

    def _onsite_features(self, h):
        """Onsite readout: one gated equivariant layer, then a linear map to the onsite irreps."""
        return self.node_out(self._gate(self.onsite_hidden(h)))

    def _gate(self, u):
        """Gated nonlinearity of features in the gated layout (hidden + trailing gate scalars)."""
        nh = self.hidden.n_scalars
        return gate_parts([u[0][:, :, :nh]] + u[1:], u[0][:, 0, nh:], self.hidden)

    @staticmethod
    def _scatter(acc, src, parts):
        for a, p in zip(acc, parts):
            if a is not None:
                a.index_add_(0, src, p)

    def _gather(self, h, idx):
        return [None if p is None else p[idx] for p in h]

    def _embed_types(self, h, types):
        T = self.basis.n_types
        h[0] = h[0] + (self.type_embed(nn.functional.one_hot(types, T).to(h[0])) * self.even_scalars).unsqueeze(1)
        return h

    # ------------------------------------------------------------------ features
    def features(self, inputs: ModelInputs, edge_chunk: int | None = None, progress=None):
        """Raw outputs (:class:`eqtb.models.base.Features`): off-site irreps features of the directed
        edges, onsite features of the atoms, and the overlap head's integrals.

        ``edge_chunk``: process about this many directed edges at a time (memory bounded by the
        chunk, for large structures; see :meth:`_features_chunked`); the blocks equal the
        unchunked ones to round-off. ``progress``: an object with ``update(n)`` (e.g. tqdm) told of
        every chunk done, :meth:`chunk_steps` in all."""
        E = inputs.n_edges
        if edge_chunk and edge_chunk < 2 * E:
            yield from self._features_chunked(inputs, edge_chunk, progress)
            return
        geo = self.geometry(inputs)
        types, src, dst = inputs.types, inputs.src, inputs.dst
        N = inputs.n_atoms
        ti, tj = types[src], types[dst]
        D, radial, env = geo["D"], geo["radial"], geo["envelope"]
        s = self._edge_scalars(radial, ti, tj)
        h = self.hidden.zeros(N, radial)
        self._scatter(h, src, self._init_message(s, D, env))
        h = self._embed_types(h, types)
        pair = self.pair_onsite.add(None, s, D, src, N, env)
        e = None
        for k in range(self.n_layers + 1):
            hf_src, hf_dst = self._bond_frames(h, src, D, E)
            e = self._edge_stage(k, e, hf_src, hf_dst, s)
            if k < self.n_layers:
                msg = self.hidden.zeros(N, radial)
                self._scatter(msg, src, self._node_message(k, hf_src, s, D, env))
                h = self._node_update(k, h, msg)
        part = Features(slice(0, E), ti, tj, {self.quantity: self._edge_output(e, hf_src, hf_dst, s, D)}, D,
                        {self.quantity: self._onsite_features_flat(h, pair)})
        self._add_overlap(part, radial, types)
        if progress is not None:
            progress.update(self.chunk_steps(inputs, None))
        yield part

    def _add_overlap(self, part: Features, radial, types=None) -> None:
        if self.overlap is None:
            return
        part.offsite["overlap"] = self.overlap.integrals(radial, part.ti, part.tj)
        if types is not None:
            part.onsite["overlap"] = self.overlap.onsite_features[types]

    def chunk_steps(self, inputs: ModelInputs, edge_chunk: int | None) -> int:
        """Number of progress updates :meth:`features` makes with this ``edge_chunk``."""
        E = inputs.n_edges
        if not edge_chunk or edge_chunk >= 2 * E:
            return 1
        return (self.n_layers + 2) * len(bond_chunks(E, edge_chunk))

    def _bond_frames(self, h, src, D, n_bonds):
        """Node features of both ends of directed edges ``[fwd; rev]`` of ``n_bonds`` bonds, in the
        edge frames: the far end's are the near end's of the reverse edge, sign-flipped
        (see :func:`eqtb.nn.so2.directed_frames`)."""
        hf_src = self.hidden.to_frame(self._gather(h, src), D)
        signs = [g.to(hf_src[0]) for g in self.flip]
        return hf_src, [torch.roll(x, n_bonds, 0) * g for x, g in zip(hf_src, signs)]

    def _onsite_features_flat(self, h, pair: list):
        """Flat onsite features: the readout of ``h`` plus the two-body sums ``pair``
        (:class:`eqtb.models.heads.PairOnsite`)."""
        return self.onsite_layout.merge([a if a is None else a + b for a, b in zip(self._onsite_features(h), pair)])

    def _features_chunked(self, inputs, edge_chunk, progress=None):
        """The same features in chunks of canonical bonds (each chunk holds both directions of its
        bonds, so its blocks are complete): node passes over the chunks, layer by layer (node
        features never read edge features), then every chunk through all edge stages and the
        heads. Geometry is kept per chunk (~40 floats per directed edge). The atom-wise updates and
        the onsite readout run on ``edge_chunk`` atoms at a time (:func:`by_rows`), so their
        temporaries do not grow with the structure."""
        types = inputs.types
        N = inputs.n_atoms
        chunks = bond_chunks(inputs.n_edges, edge_chunk)
        geos = chunk_geometry(self, inputs, ("chunk_geometry", chunks[0].stop), chunks,
                              lambda sl: self._bond_geometry(inputs, sl))

        def local(sl, geo):
            i, j = inputs.i[sl], inputs.j[sl]
            src, dst = torch.cat([i, j]), torch.cat([j, i])
            return src, types[src], types[dst], self._edge_scalars(geo["radial"], types[src], types[dst])

        def tick():
            if progress is not None:
                progress.update(1)

        like = geos[0]["radial"]
        h = self.hidden.zeros(N, like)
        pair = None
        for sl, geo in zip(chunks, geos):
            src, _, _, s = local(sl, geo)
            self._scatter(h, src, self._init_message(s, geo["D"], geo["envelope"]))
            pair = self.pair_onsite.add(pair, s, geo["D"], src, N, geo["envelope"])
            tick()
        hs = [self._embed_types(h, types)]
        for k in range(self.n_layers):
            msg = self.hidden.zeros(N, like)
            for sl, geo in zip(chunks, geos):
                src, _, _, s = local(sl, geo)
                hf = self.hidden.to_frame(self._gather(hs[-1], src), geo["D"])
                self._scatter(msg, src, self._node_message(k, hf, s, geo["D"], geo["envelope"]))
                tick()
            hs.append(by_rows(lambda h, m: self._node_update(k, h, m), N, edge_chunk, hs[-1], msg))
            del msg
        for n, (sl, geo) in enumerate(zip(chunks, geos)):
            src, ti, tj, s = local(sl, geo)
            D, nb = geo["D"], sl.stop - sl.start
            e = None
            for k, h in enumerate(hs):
                hf_src, hf_dst = self._bond_frames(h, src, D, nb)
                e = self._edge_stage(k, e, hf_src, hf_dst, s)
            part = Features(sl, ti, tj, {self.quantity: self._edge_output(e, hf_src, hf_dst, s, D)}, D)
            last = n == len(chunks) - 1
            if last:
                part.onsite[self.quantity] = by_rows(self._onsite_features_flat, N, edge_chunk, hs[-1], pair)
            self._add_overlap(part, geo["radial"], types if last else None)
            tick()
            yield part
