"""Black holes: groups of bit-identical rows in an embedding matrix, and the lattice graph around them.

A *black hole* (BH) is a row value shared bit for bit by two or more rows; a *singleton* is a value held by
one row (lore/black-holes.qmd, "Definition"). Identity is always on the stored bytes: uint16 bits for bf16, the raw block
bytes for quantized tensors, the float32 bits for float32 — never on rounded values.

The census must be fast on a Qwen-size matrix (151,936 × 2,560 bf16, 778 MB) where ``np.unique(axis=0)``
takes ~16 s. Rows are hashed with two vectorised 64-bit polynomial hashes over their uint64 words (an integer
matrix-vector product, one pass over memory), the hashes are sorted, and every candidate group is verified
bytewise against its first row, so a hash collision can cost time but can never merge different rows.

The frozen-smoke pipeline (lore/frozen-smoke.qmd, where the seeds' Qwen3-4B numbers are quoted) then works on the bf16 lattice only: select the rows within
exponent-space L∞ ≤ k of the most populated BH, take their unique vectors as graph nodes, join nodes whose
lattice L∞ distance (sign-aware bit-pattern differences, `experiments.lattice.lifecycle.ordinal`) is 1, and summarise
the components as the seeds' table. Nodes and BH labels follow first occurrence in the matrix (the seeds'
BH0…BH12 followed ``torch.unique`` order instead); BH lists are sorted by population.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from experiments.lattice import lifecycle as lattice

# fixed seeds: the hash must be the same on every run so results (and collisions, if any) are reproducible
_HASH_SEED = 0x5EED_B1AC
_ROWS_PER_BLOCK = 8192
_HASH_ROWS = 256  # hashing blocks small enough that both passes over a block hit the cache
EXPONENT_SWEEP = (0, 1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 20)


# ---------------------------------------------------------------------------------------------------------
# hashing and the census


def _row_bytes(rows: np.ndarray) -> np.ndarray:
    """(V, B) uint8 bytes of each row, zero-padded so B is a multiple of 8 (a view when no padding is needed)."""
    a = np.asarray(rows)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D (rows, columns) array, got shape {a.shape}")
    a = np.ascontiguousarray(a)
    b = a.view(np.uint8).reshape(a.shape[0], -1)
    if b.shape[1] % 8:
        padded = np.zeros((b.shape[0], -(-b.shape[1] // 8) * 8), dtype=np.uint8)
        padded[:, : b.shape[1]] = b
        b = padded
    return b


def _row_words(rows: np.ndarray) -> np.ndarray:
    """(V, W) uint64 words of each row's bytes (see `_row_bytes`)."""
    return _row_bytes(rows).view(np.uint64)


def _fmix64(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's finaliser: a bijection that spreads every input bit over the whole word
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def row_hashes(rows: np.ndarray) -> np.ndarray:
    """64-bit hash of each row's bytes; equal rows always get equal hashes.

    Σ wⱼ·cⱼ mod 2⁶⁴ over the uint64 words wⱼ with random odd cⱼ (an integer matrix-vector product: one
    pass over memory). A difference confined to a word's high bytes only reaches the hash's high bits, so a
    second sum runs over the words read 4 bytes later (a strided view, no copy), which moves those bytes to
    the low half; the two sums are mixed. Collisions stay possible in principle, which is why `census`
    verifies every group.
    """
    b = _row_bytes(rows)
    words = b.view(np.uint64)
    shifted = b[:, 4:b.shape[1] - 4].view(np.uint64)  # words straddling each pair of neighbours
    rng = np.random.default_rng(_HASH_SEED)
    c1 = rng.integers(0, 2**63, size=words.shape[1], dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    c2 = rng.integers(0, 2**63, size=shifted.shape[1], dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    out = np.empty(words.shape[0], dtype=np.uint64)
    for s in range(0, words.shape[0], _HASH_ROWS):
        e = s + _HASH_ROWS
        out[s:e] = _fmix64(words[s:e] @ c1) ^ (shifted[s:e] @ c2)
    return out


@dataclass
class Census:
    """Unique row values of a matrix, their populations and which rows hold each.

    Unique vectors are numbered by first occurrence (the row index of their first holder). `row_ids` maps
    row positions to vocabulary ids (a run file may record only some rows); token ids reported by the
    methods below are vocabulary ids.
    """

    n_rows: int
    row_bytes: int
    inverse: np.ndarray  # (V,) unique-vector index of each row
    first_row: np.ndarray  # (U,) row position of each unique vector's first holder, ascending
    populations: np.ndarray  # (U,) rows per unique vector
    row_ids: np.ndarray  # (V,) vocabulary id of each row position
    _order: np.ndarray = field(repr=False)  # row positions grouped by unique vector
    _offsets: np.ndarray = field(repr=False)  # (U+1,) CSR offsets into _order

    @property
    def n_unique(self) -> int:
        return int(self.populations.shape[0])

    @property
    def black_holes(self) -> np.ndarray:
        """Unique-vector indices with population ≥ 2, largest first (ties: first occurrence)."""
        bh = np.flatnonzero(self.populations > 1)
        return bh[np.lexsort((bh, -self.populations[bh]))]

    @property
    def tokens_in_black_holes(self) -> int:
        return int(self.populations[self.populations > 1].sum())

    def rows_of(self, u: int) -> np.ndarray:
        """Row positions holding unique vector `u`, ascending."""
        return self._order[self._offsets[u]:self._offsets[u + 1]]

    def members(self, u: int) -> np.ndarray:
        """Vocabulary ids of the rows holding unique vector `u`, ascending by row position."""
        return self.row_ids[self.rows_of(u)]

    def to_json(self, top: int | None = 20, tokens: list[str] | None = None) -> dict:
        """Plain-data summary; per BH (largest `top`) its population and member ids (and strings if given)."""
        bhs = self.black_holes
        listed = []
        for rank, u in enumerate(bhs[:top] if top is not None else bhs):
            ids = self.members(int(u))
            entry = {"rank": rank, "unique_index": int(u), "population": int(self.populations[u]),
                     "token_ids": ids.tolist()}
            if tokens is not None:
                entry["tokens"] = [tokens[i] if 0 <= i < len(tokens) else None for i in ids.tolist()]
            listed.append(entry)
        return {
            "rows": self.n_rows,
            "row_bytes": self.row_bytes,
            "unique": self.n_unique,
            "black_holes": int(bhs.size),
            "tokens_in_black_holes": self.tokens_in_black_holes,
            "duplicates": self.tokens_in_black_holes - int(bhs.size),
            "largest": int(self.populations.max()) if self.n_unique else 0,
            "populations": self.populations[bhs].tolist(),
            "black_hole_list": listed,
        }


def census(rows: np.ndarray, row_ids=None, hash_fn=row_hashes) -> Census:
    """Group the bit-identical rows of a 2-D array (any dtype; identity on the bytes of each row).

    `hash_fn(rows) -> (V,) uint64` is replaceable (tests plant collisions with it); correctness never
    depends on it because candidate groups are verified bytewise and split when they disagree.
    """
    a = np.ascontiguousarray(rows)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D (rows, columns) array, got shape {a.shape}")
    v = a.shape[0]
    ids = np.arange(v, dtype=np.int64) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
    if ids.shape != (v,):
        raise ValueError(f"row_ids has shape {ids.shape}, expected ({v},)")
    if v == 0:
        empty = np.empty(0, np.int64)
        return Census(0, a.dtype.itemsize * a.shape[1], empty, empty, empty, ids, empty, np.zeros(1, np.int64))
    keys = np.asarray(hash_fn(a))
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    new_run = np.empty(v, dtype=bool)
    new_run[0] = True
    np.not_equal(ks[1:], ks[:-1], out=new_run[1:])
    run_idx = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    # stable sort: a run's first position holds its smallest row index, the group's natural leader
    leader_sorted = order[starts[run_idx]]

    words = _row_words(a)
    cand = np.flatnonzero(~new_run)
    bad = np.zeros(len(starts), dtype=bool)
    for s in range(0, cand.size, _ROWS_PER_BLOCK):
        c = cand[s:s + _ROWS_PER_BLOCK]
        same = (words[order[c]] == words[leader_sorted[c]]).all(axis=1)
        bad[run_idx[c[~same]]] = True
    for r in np.flatnonzero(bad):  # hash collision: split the run exactly
        pos = np.arange(starts[r], starts[r + 1] if r + 1 < len(starts) else v)
        members = order[pos]
        _, sub = np.unique(words[members], axis=0, return_inverse=True)
        sub = sub.reshape(-1)
        first = np.full(sub.max() + 1, v, dtype=np.int64)
        np.minimum.at(first, sub, members)
        leader_sorted[pos] = first[sub]

    leader = np.empty(v, dtype=np.int64)
    leader[order] = leader_sorted
    is_first = leader == np.arange(v)
    inverse = (np.cumsum(is_first) - 1)[leader]
    first_row = np.flatnonzero(is_first)
    populations = np.bincount(inverse, minlength=first_row.size)
    grouped = np.argsort(inverse, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(populations)])
    return Census(v, a.dtype.itemsize * a.shape[1], inverse, first_row, populations, ids, grouped, offsets)


# ---------------------------------------------------------------------------------------------------------
# selection and lattice graph


def anchor_row(c: Census) -> int:
    """Row position of the first holder of the most populated black hole (the seeds' John, token 80091)."""
    bhs = c.black_holes
    if bhs.size == 0:
        raise ValueError("the matrix has no black holes, so there is no anchor; pass one explicitly")
    return int(c.first_row[bhs[0]])


def exponent_distances(bits: np.ndarray, anchor: int) -> np.ndarray:
    """(V,) exponent-space L∞ of every row from row `anchor` (rows of inf/NaN count as far away)."""
    b = lattice.as_bits(bits)
    e0 = lattice.exponent_field(b[anchor])
    out = np.empty(b.shape[0], dtype=np.int16)
    step = 1024  # cache-sized blocks: ~3× faster than large ones here
    for s in range(0, b.shape[0], step):
        out[s:s + step] = np.abs(lattice.exponent_field(b[s:s + step]) - e0).max(axis=1)
    return out


def _column_mode(x: np.ndarray) -> np.ndarray:
    # most frequent value per column (ties: smallest), vectorised via run lengths in the sorted columns
    s = np.sort(x, axis=0)
    n = s.shape[0]
    start = np.ones(s.shape, dtype=bool)
    start[1:] = s[1:] != s[:-1]
    idx = np.arange(n)[:, None]
    run_start = np.maximum.accumulate(np.where(start, idx, 0), axis=0)
    end = np.ones(s.shape, dtype=bool)
    end[:-1] = start[1:]
    run_end = np.minimum.accumulate(np.where(end, idx, n)[::-1], axis=0)[::-1]
    length = run_end - run_start + 1
    return s[np.argmax(length, axis=0), np.arange(s.shape[1])]


def pairwise_lattice(ords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact (n, n) L∞ and L1 distance matrices (int32) between integer vectors, e.g. `lattice.ordinal` rows.

    Works on deviations from the per-column mode: a column where only s vectors deviate costs s·n work, so
    a tight cloud (most coordinates shared, as in the frozen smoke) costs O(nnz·n) instead of O(n²·D).
    Dense columns switch to all pairs at once, so dense data costs what brute force does. Memory: five n×n
    int32 matrices.
    """
    x = np.asarray(ords, dtype=np.int32)
    n = x.shape[0]
    linf = np.zeros((n, n), dtype=np.int32)
    acc = np.zeros((n, n), dtype=np.int32)  # L1 over the columns where the row's node deviates
    both = np.zeros((n, n), dtype=np.int32)  # … the part of it where both nodes deviate (counted twice below)
    if n < 2:
        return linf, acc
    direct = np.zeros((n, n), dtype=np.int32)  # L1 of dense columns, added for all pairs at once
    dev = np.ascontiguousarray((x - _column_mode(x)).T)  # (D, n): one column per row of memory
    for col in dev[np.flatnonzero(dev.any(axis=1))]:
        s = np.flatnonzero(col)
        if 4 * s.size >= n:  # dense column: the full pair matrix is cheaper than scattered bookkeeping
            diff = np.abs(col[:, None] - col[None, :])
            np.maximum(linf, diff, out=linf)
            direct += diff
            continue
        diff = np.abs(col[s, None] - col[None, :])  # pairs (a deviating here, any b); whole rows stay contiguous
        linf[s] = np.maximum(linf[s], diff)
        acc[s] += diff
        both[np.ix_(s, s)] += diff[:, s]
    return np.maximum(linf, linf.T), acc + acc.T - both + direct


def pairwise_linf(ords: np.ndarray) -> np.ndarray:
    """Exact (n, n) lattice L∞ distance matrix (int32); see `pairwise_lattice`."""
    return pairwise_lattice(ords)[0]


def components(n: int, edges_i: np.ndarray, edges_j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n nodes (the smallest node index in its component).

    Hook-and-jump union (Shiloach–Vishkin style) with numpy: O(E) work per round, O(log n) rounds.
    """
    parent = np.arange(n)
    i, j = np.asarray(edges_i, dtype=np.int64), np.asarray(edges_j, dtype=np.int64)
    while True:
        pi, pj = parent[i], parent[j]
        lo, hi = np.minimum(pi, pj), np.maximum(pi, pj)
        diff = lo != hi
        if not diff.any():
            return parent
        np.minimum.at(parent, hi[diff], lo[diff])
        while True:  # pointer jumping until every node points at its root
            pp = parent[parent]
            if np.array_equal(pp, parent):
                break
            parent = pp


def clustering(adj: np.ndarray) -> np.ndarray:
    """Local clustering coefficient of each node of a dense boolean adjacency matrix (0 when degree < 2),
    the definition networkx's `average_clustering` averages."""
    a = adj.astype(np.float64)
    deg = a.sum(axis=1)
    tri = ((a @ a) * a).sum(axis=1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(deg > 1, 2 * tri / (deg * (deg - 1)), 0.0)
    return c


@dataclass
class ComponentRow:
    """One row of the seeds' summary table (Cluster = mean local clustering coefficient)."""

    comp: str
    nodes: int
    tokens: int
    core: int
    bh: int
    edges: int
    density: float | None
    cluster: float | None
    mean_degree: float
    max_degree: int


@dataclass
class Zones:
    """Geographic core / Oort cloud split by weight-space L2 distance from a centre vector."""

    center: str  # "anchor" or "medoid"
    center_token: int
    radius: float
    core_vectors: int
    core_tokens: int
    core_bh: int
    oort_vectors: int
    oort_tokens: int
    oort_bh: int
    max_distance: float
    farthest_token: int
    bands: list[dict]  # vectors/tokens per distance band


@dataclass
class SmokeReport:
    """Everything the frozen-smoke pipeline computes (see the module docstring and lore/frozen-smoke.qmd)."""

    anchor_token: int
    select_k: int
    selected_tokens: int
    exponent_sweep: dict[int, int]
    nodes: int
    node_tokens: list[int]  # first token id of each node, first-occurrence order
    node_populations: list[int]
    black_holes: int
    adjacency_k: int
    edges: int
    components: int
    edge_l1: dict[int, int]  # "diagonality" histogram of edge L1 lengths
    core_nodes: int
    core_tokens: int
    flood_fill: list[int]  # nodes added per flood-fill iteration from the BHs (strict L∞ = 1 graph)
    moons: int  # non-core nodes at L∞ = 2 from the core
    outside_min_linf_median: float | None
    table: list[ComponentRow]
    singletons: ComponentRow
    bh_tokens: list[int]  # first token of each BH, largest first
    bh_populations: list[int]
    bh_linf: list[list[int]]  # lattice L∞ between BHs, same order
    zones: Zones

    def to_json(self) -> dict:
        d = asdict(self)
        d["exponent_sweep"] = {str(k): v for k, v in self.exponent_sweep.items()}
        d["edge_l1"] = {str(k): v for k, v in self.edge_l1.items()}
        return json.loads(json.dumps(d))


def _flood_fill(adj: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, list[int]]:
    # breadth-first closure from the seeds over a dense adjacency matrix; members and how many joined per wave
    inside = np.zeros(adj.shape[0], dtype=bool)
    inside[seeds] = True
    frontier, waves = inside.copy(), [int(seeds.size)]
    while frontier.any():
        frontier = adj[frontier].any(axis=0) & ~inside
        inside |= frontier
        if frontier.any():
            waves.append(int(frontier.sum()))
    return inside, waves


def component_table(dist: np.ndarray, populations: np.ndarray, core: np.ndarray, k: int = 1
                    ) -> tuple[list[ComponentRow], ComponentRow, int, np.ndarray]:
    """The seeds' summary table of the graph joining distinct nodes at lattice L∞ ≤ k.

    Returns (rows for components of ≥ 2 nodes ordered by nodes then tokens, the singletons row, the number
    of components including singletons, the component label of each node).
    """
    n = dist.shape[0]
    adj = dist <= k
    np.fill_diagonal(adj, False)
    i, j = np.nonzero(np.triu(adj, 1))
    label = components(n, i, j)
    deg = adj.sum(axis=1)
    pops = np.asarray(populations)
    roots, sizes = np.unique(label, return_counts=True)
    rows = []
    for r in roots[sizes > 1]:
        m = np.flatnonzero(label == r)
        sub = adj[np.ix_(m, m)]
        e = int(sub.sum() // 2)
        rows.append(ComponentRow(
            comp="", nodes=int(m.size), tokens=int(pops[m].sum()), core=int(core[m].sum()),
            bh=int((pops[m] > 1).sum()), edges=e, density=e / (m.size * (m.size - 1) / 2),
            cluster=float(clustering(sub).mean()), mean_degree=float(deg[m].mean()), max_degree=int(deg[m].max())))
    rows.sort(key=lambda r: (-r.nodes, -r.tokens))
    for rank, row in enumerate(rows, start=1):
        row.comp = str(rank)
    iso = np.isin(label, roots[sizes == 1])
    single = ComponentRow(comp="Sing", nodes=int(iso.sum()), tokens=int(pops[iso].sum()), core=int(core[iso].sum()),
                          bh=int((pops[iso] > 1).sum()), edges=0, density=None, cluster=None, mean_degree=0.0,
                          max_degree=0)
    return rows, single, int(roots.size), label


def _histogram(values: np.ndarray) -> dict[int, int]:
    vals, counts = np.unique(values, return_counts=True)
    return {int(v): int(c) for v, c in zip(vals, counts, strict=True)}


def _medoid(values: np.ndarray, weights: np.ndarray) -> int:
    # population-weighted medoid via the Gram matrix (float64 keeps 1e-5-scale distances on 0.37 norms)
    g = values @ values.T
    sq = np.diag(g)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * g, 0))
    return int(np.argmin(d @ weights))


def frozen_smoke(bits: np.ndarray, c: Census, select_k: int = 5, adjacency_k: int = 1,
                 zone_radius: float = 5e-5, anchor: int | None = None, center: str = "anchor",
                 bands: tuple[float, ...] = (5e-5, 1e-4, 5e-4, 1e-3, 5e-3), max_nodes: int = 5_000) -> SmokeReport:
    """Run the frozen-smoke pipeline on a bf16 matrix (uint16 bits) and its census.

    anchor: row position of the selection's centre (default: the first row of the most populated BH).
    select_k: exponent-space L∞ radius around the anchor (the seeds used 5 around token 80091).
    adjacency_k: graph edges join nodes with lattice L∞ ≤ adjacency_k (1 = strict; the seeds' relaxed
    graph used 2). The core is always the strict L∞ = 1 flood fill from the BHs, as in the seeds.
    zone_radius: weight-space L2 from the centre splitting geographic core (<) from Oort cloud (≥).
    center: "anchor" (the most populated BH) or "medoid" (population-weighted medoid of the nodes).
    max_nodes: refuse larger selections: the graph keeps several n×n matrices and clustering costs up to n³.
    """
    b = lattice.as_bits(bits)
    if b.ndim != 2 or b.shape[0] != c.n_rows:
        raise ValueError(f"bits have shape {b.shape} but the census covers {c.n_rows} rows")
    if select_k < 0 or adjacency_k < 1 or zone_radius <= 0:
        raise ValueError("need select_k ≥ 0, adjacency_k ≥ 1 and zone_radius > 0")
    if center not in ("anchor", "medoid"):
        raise ValueError(f"center must be 'anchor' or 'medoid', not {center!r}")
    a_row = anchor_row(c) if anchor is None else int(anchor)
    if not 0 <= a_row < c.n_rows:
        raise ValueError(f"anchor row {a_row} is outside the matrix (0…{c.n_rows - 1})")
    edist = exponent_distances(b, a_row)
    sweep = {k: int((edist <= k).sum()) for k in sorted(set(EXPONENT_SWEEP) | {select_k})}
    selected = edist <= select_k
    # identical rows have identical exponents, so the selection is a union of whole unique vectors
    node_u = np.unique(c.inverse[selected])
    if node_u.size > max_nodes:
        raise ValueError(f"the exponent L∞ ≤ {select_k} selection holds {node_u.size:,} unique vectors, more than "
                         f"max_nodes = {max_nodes:,} (the graph needs n² memory); choose a smaller select_k")
    pops = c.populations[node_u]
    node_rows = c.first_row[node_u]
    vecs = b[node_rows]
    lattice.check_finite(vecs, "selected rows")
    dist, l1 = pairwise_lattice(lattice.ordinal(vecs))

    strict = dist <= 1
    np.fill_diagonal(strict, False)
    bh_nodes = np.flatnonzero(pops > 1)
    core, waves = _flood_fill(strict, bh_nodes)
    outside = ~core
    min_to_core = dist[np.ix_(outside, core)].min(axis=1) if core.any() and outside.any() else np.empty(0)

    rows, single, n_comp, _ = component_table(dist, pops, core, adjacency_k)
    adj = dist <= adjacency_k
    np.fill_diagonal(adj, False)
    ei, ej = np.nonzero(np.triu(adj, 1))

    bh_order = bh_nodes[np.lexsort((bh_nodes, -pops[bh_nodes]))]
    values = lattice.to_float32(vecs).astype(np.float64)
    centre_i = int(np.searchsorted(node_u, c.inverse[a_row])) if center == "anchor" else _medoid(values, pops)
    r = np.sqrt(((values - values[centre_i]) ** 2).sum(axis=1))
    inner = r < zone_radius
    edges_b = np.concatenate([[0.0], np.asarray(bands, dtype=np.float64), [np.inf]])
    band_list = []
    for lo, hi in zip(edges_b[:-1], edges_b[1:], strict=True):
        m = (r >= lo) & (r < hi)
        band_list.append({"from": float(lo), "to": None if np.isinf(hi) else float(hi),
                          "vectors": int(m.sum()), "tokens": int(pops[m].sum())})
    far = int(np.argmax(r))
    zones = Zones(center=center, center_token=int(c.row_ids[node_rows[centre_i]]), radius=float(zone_radius),
                  core_vectors=int(inner.sum()), core_tokens=int(pops[inner].sum()),
                  core_bh=int((pops[inner] > 1).sum()), oort_vectors=int((~inner).sum()),
                  oort_tokens=int(pops[~inner].sum()), oort_bh=int((pops[~inner] > 1).sum()),
                  max_distance=float(r[far]), farthest_token=int(c.row_ids[node_rows[far]]), bands=band_list)

    return SmokeReport(
        anchor_token=int(c.row_ids[a_row]), select_k=int(select_k), selected_tokens=int(selected.sum()),
        exponent_sweep=sweep, nodes=int(node_u.size), node_tokens=c.row_ids[node_rows].tolist(),
        node_populations=pops.tolist(), black_holes=int(bh_nodes.size), adjacency_k=int(adjacency_k),
        edges=int(ei.size), components=n_comp, edge_l1=_histogram(l1[ei, ej]),
        core_nodes=int(core.sum()), core_tokens=int(pops[core].sum()), flood_fill=waves,
        moons=int((min_to_core == 2).sum()),
        outside_min_linf_median=float(np.median(min_to_core)) if min_to_core.size else None,
        table=rows, singletons=single, bh_tokens=c.row_ids[node_rows[bh_order]].tolist(),
        bh_populations=pops[bh_order].tolist(), bh_linf=dist[np.ix_(bh_order, bh_order)].tolist(), zones=zones)


# ---------------------------------------------------------------------------------------------------------
# text formatting


def format_census(c: Census, top: int = 20, tokens: list[str] | None = None) -> str:
    """Census as text: totals, then the `top` largest black holes with example tokens."""
    j = c.to_json(top=top, tokens=tokens)
    lines = [
        f"rows {j['rows']:,}  unique {j['unique']:,}  black holes {j['black_holes']:,}  "
        f"tokens in black holes {j['tokens_in_black_holes']:,}  largest {j['largest']:,}",
    ]
    if j["black_holes"]:
        pops = j["populations"]
        parts = [str(p) for p in pops[:top]] + ([f"… ({len(pops) - top} more)"] if len(pops) > top else [])
        shown = ", ".join(parts)
        lines.append(f"populations: {shown}")
        for bh in j["black_hole_list"]:
            ids = bh["token_ids"]
            ex = ", ".join(str(i) for i in ids[:5]) + (" …" if len(ids) > 5 else "")
            if "tokens" in bh:
                ex += "  " + " ".join(repr(t) for t in bh["tokens"][:5] if t is not None)
            lines.append(f"  BH{bh['rank']:<3} {bh['population']:>6} tokens  ids {ex}")
    return "\n".join(lines)


def format_table(report: SmokeReport) -> str:
    """The seeds' summary table (Comp, Nodes, Tokens, Core, BH, Edges, Density, Cluster) as text."""
    head = f"{'Comp':>5} {'Nodes':>6} {'Tokens':>7} {'Core':>5} {'BH':>4} {'Edges':>6} {'Density':>8} {'Cluster':>8}"
    lines = [head, "-" * len(head)]
    for row in [*report.table, report.singletons]:
        dens = "" if row.density is None else f"{row.density:.3f}"
        clus = "" if row.cluster is None else f"{row.cluster:.3f}"
        lines.append(f"{row.comp:>5} {row.nodes:>6} {row.tokens:>7} {row.core:>5} {row.bh:>4} {row.edges:>6} "
                     f"{dens:>8} {clus:>8}")
    return "\n".join(lines)


def format_report(report: SmokeReport) -> str:
    """Selection, graph, core and zone facts followed by the component table."""
    z = report.zones
    lines = [
        f"selection: exponent L∞ ≤ {report.select_k} of token {report.anchor_token}: "
        f"{report.selected_tokens:,} tokens, {report.nodes} unique vectors ({report.black_holes} BH + "
        f"{report.nodes - report.black_holes} singletons)",
        "exponent sweep (k → tokens): " + ", ".join(f"{k}→{v:,}" for k, v in report.exponent_sweep.items()),
        f"graph (lattice L∞ ≤ {report.adjacency_k}): {report.edges} edges, {report.components} components; "
        "edge L1: " + (", ".join(f"{k}→{v}" for k, v in report.edge_l1.items()) or "none"),
        f"core (flood fill from the BHs along L∞ = 1): {report.core_nodes} vectors, {report.core_tokens:,} tokens, "
        f"waves {' → '.join(f'+{w}' if i else str(w) for i, w in enumerate(report.flood_fill))}; "
        f"moons (L∞ = 2) {report.moons}",
        f"zones (L2 from {z.center} token {z.center_token}, r = {z.radius:g}): core {z.core_vectors} vectors / "
        f"{z.core_tokens:,} tokens ({z.core_bh} BH), Oort {z.oort_vectors} / {z.oort_tokens:,} ({z.oort_bh} BH); "
        f"farthest token {z.farthest_token} at {z.max_distance:.6g}",
        "",
        format_table(report),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# under-trained token indicators (Magikarp)


@dataclass
class Undertrained:
    """Per-row under-training indicators after Land & Bartolo's "Fishing for Magikarp" (2024).

    norm: L2 norm of each row. cosine: cosine similarity of each row to the mean of known-unused reference
    rows, after projecting out the matrix's first principal direction (a shared component that otherwise
    dominates every cosine). High cosine and atypical norm flag rows that training left near their start.
    """

    norm: np.ndarray  # (V,)
    cosine: np.ndarray  # (V,)
    reference_rows: np.ndarray  # (R,) row positions used as the known-unused reference

    def compare(self, c: Census | None = None) -> dict:
        """Median indicators for reference rows, black-hole rows and the rest, and AUCs for separating them."""
        v = self.norm.shape[0]
        ref = np.zeros(v, dtype=bool)
        ref[self.reference_rows] = True
        groups = {"reference": ref}
        if c is not None:
            in_bh = c.populations[c.inverse] > 1
            groups["black_hole"] = in_bh
            groups["other"] = ~ref & ~in_bh
        else:
            groups["other"] = ~ref
        out = {}
        for name, m in groups.items():
            out[name] = {"rows": int(m.sum()),
                         "median_norm": float(np.median(self.norm[m])) if m.any() else None,
                         "median_cosine": float(np.median(self.cosine[m])) if m.any() else None}
        out["auc_cosine_reference"] = _auc(self.cosine, ref)
        if c is not None:
            out["auc_cosine_black_hole"] = _auc(self.cosine, groups["black_hole"])
        return out


def _auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    # probability that a random positive outscores a random negative (ties count half), via ranks
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="stable")
    ranks = np.empty(score.size, dtype=np.float64)
    ranks[order] = np.arange(1, score.size + 1)
    # average ranks over ties
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _first_direction(x: np.ndarray, iterations: int = 50, tol: float = 1e-7) -> np.ndarray:
    # dominant right singular vector by power iteration: two passes over x per step, no D×D matrix
    v = np.ones(x.shape[1], dtype=np.float64) / np.sqrt(x.shape[1])
    for _ in range(iterations):
        w = (x.T @ (x @ v.astype(x.dtype))).astype(np.float64)
        w /= np.linalg.norm(w)
        done = np.linalg.norm(w - v) < tol
        v = w
        if done:
            break
    return v


def undertrained_indicators(values: np.ndarray, reference_rows, remove_first_direction: bool = True
                            ) -> Undertrained:
    """Magikarp indicators of a (V, D) float matrix given the row positions of known-unused tokens."""
    x = np.asarray(values, dtype=np.float32)
    ref = np.asarray(reference_rows, dtype=np.int64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {x.shape}")
    if ref.size == 0 or ref.min() < 0 or ref.max() >= x.shape[0]:
        raise ValueError(f"reference_rows must be a non-empty set of row positions in [0, {x.shape[0]})")
    norm = np.linalg.norm(x, axis=1).astype(np.float64)
    if remove_first_direction:
        d = _first_direction(x).astype(np.float32)
        x = x - np.outer(x @ d, d)
    mean = x[ref].mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = (x @ mean) / (np.linalg.norm(x, axis=1) * np.linalg.norm(mean))
    return Undertrained(norm=norm, cosine=np.nan_to_num(cos.astype(np.float64)), reference_rows=ref)
