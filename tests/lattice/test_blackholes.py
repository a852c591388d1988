"""Black-hole census (planted groups, planted collisions) and the frozen-smoke graph on a hand-built lattice."""

import json

import numpy as np
import pytest

from experiments.lattice import blackholes as bh


def _same_partition(c, rows):
    # the census groups rows exactly as np.unique(axis=0) does (up to numbering)
    _, inv = np.unique(np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), -1), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    pairs = set(zip(c.inverse.tolist(), inv.tolist(), strict=True))
    return len(pairs) == c.n_unique == inv.max() + 1


def test_planted_groups_are_found_with_members():
    rng = np.random.default_rng(1)
    w = rng.integers(0, 2**16, size=(3000, 24), dtype=np.uint16)
    planted = {5: [10, 200, 999, 1500, 2999], 3: [0, 1, 2], 2: [700, 701]}
    for rows in planted.values():
        w[rows] = w[rows[0]]
    c = bh.census(w)
    assert c.n_rows == 3000 and c.row_bytes == 48
    assert c.n_unique == 3000 - 4 - 2 - 1
    assert c.populations[c.black_holes].tolist() == [5, 3, 2]
    assert [c.members(int(u)).tolist() for u in c.black_holes] == [planted[5], planted[3], planted[2]]
    assert c.tokens_in_black_holes == 10
    assert _same_partition(c, w)
    # first-occurrence numbering: unique index u's first row is increasing in u
    assert np.all(np.diff(c.first_row) > 0) and c.inverse[0] == 0


def test_forced_hash_collisions_never_merge_rows_differing_in_one_bit():
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2**16, size=16, dtype=np.uint16)
    w = np.tile(base, (40, 1))
    for i in range(1, 33):  # rows 1…32 each differ from row 0 in exactly one bit
        w[i, i % 16] ^= np.uint16(1 << (i // 16))  # (column, bit) distinct for every i
    w[33:] = w[5]  # 7 more copies of row 5
    c = bh.census(w, hash_fn=lambda rows: np.zeros(len(rows), dtype=np.uint64))  # everything collides
    assert _same_partition(c, w)
    assert c.members(int(c.inverse[5])).tolist() == [5, 33, 34, 35, 36, 37, 38, 39]
    assert c.members(int(c.inverse[0])).tolist() == [0]


def test_hash_separates_every_single_bit_flip():
    # a plain Σ w·c hash only sees high-bit changes in its high bits; the rotated second sum must fix that
    rng = np.random.default_rng(3)
    row = rng.integers(0, 2**16, size=(1, 40), dtype=np.uint16)
    variants = np.repeat(row, 1 + 16 * 40, axis=0)
    for k in range(16 * 40):
        variants[1 + k, k // 16] ^= np.uint16(1 << (k % 16))
    h = bh.row_hashes(variants)
    assert np.unique(h).size == variants.shape[0]
    assert np.array_equal(bh.row_hashes(variants), h)  # deterministic across calls


def test_raw_byte_rows_of_odd_width_and_row_ids():
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 256, size=(50, 34), dtype=np.uint8)  # one Q8_0 block per row
    raw[[3, 30, 31]] = raw[3]
    ids = np.arange(1000, 1050)
    c = bh.census(raw, row_ids=ids)
    assert c.row_bytes == 34
    assert c.members(int(c.black_holes[0])).tolist() == [1003, 1030, 1031]
    j = c.to_json(tokens=[f"t{i}" for i in range(1040)])
    assert j["black_hole_list"][0]["tokens"] == ["t1003", "t1030", "t1031"]
    with pytest.raises(ValueError, match="row_ids"):
        bh.census(raw, row_ids=ids[:3])
    with pytest.raises(ValueError, match="2-D"):
        bh.census(raw.reshape(-1))


def test_pairwise_lattice_distances_match_brute_force():
    rng = np.random.default_rng(5)
    dense = rng.integers(-300, 300, size=(40, 30)).astype(np.int32)
    sparse = np.tile(rng.integers(-300, 300, size=30), (60, 1)).astype(np.int32)
    mask = rng.random(sparse.shape) < 0.05
    sparse[mask] += rng.integers(-4, 5, size=mask.sum())
    mixed = sparse.copy()
    mixed[:, :10] = rng.integers(-300, 300, size=(60, 10))  # dense and sparse columns in one matrix
    for x in (dense, sparse, mixed):
        diff = np.abs(x[:, None, :] - x[None, :, :])
        linf, l1 = bh.pairwise_lattice(x)
        assert np.array_equal(linf, diff.max(axis=-1))
        assert np.array_equal(l1, diff.sum(axis=-1))
        assert np.array_equal(bh.pairwise_linf(x), linf)


def test_components_and_clustering():
    # chain 5-4-3-2-1-0 (worst case for naive propagation), a triangle 6-7-8 with pendant 9, isolated 10
    i = np.array([5, 4, 3, 2, 1, 6, 7, 8, 6])
    j = np.array([4, 3, 2, 1, 0, 7, 8, 6, 9])
    assert bh.components(11, i, j).tolist() == [0] * 6 + [6] * 4 + [10]
    adj = np.zeros((4, 4), dtype=bool)
    for a, b in [(0, 1), (1, 2), (2, 0), (0, 3)]:
        adj[a, b] = adj[b, a] = True
    assert bh.clustering(adj).tolist() == pytest.approx([1 / 3, 1, 1, 0])


def test_frozen_smoke_on_hand_built_lattice(hand_lattice):
    bits, where = hand_lattice
    c = bh.census(bits)
    assert c.n_unique == 12 and c.populations[c.black_holes].tolist() == [5, 3, 2, 2]
    r = bh.frozen_smoke(bits, c, select_k=5, zone_radius=0.01)
    assert r.anchor_token == where["A"][0]
    assert r.selected_tokens == 19 and r.nodes == 11 and r.black_holes == 4  # the far row is excluded
    assert r.exponent_sweep[6] == 19 and r.exponent_sweep[8] == 20
    assert r.edges == 9 and r.components == 5
    assert r.edge_l1 == {1: 6, 2: 3}
    table = [(t.comp, t.nodes, t.tokens, t.core, t.bh, t.edges) for t in r.table]
    assert table == [("1", 4, 9, 4, 2, 6), ("2", 3, 4, 3, 1, 2), ("3", 2, 2, 0, 0, 1)]
    assert [t.density for t in r.table] == pytest.approx([1.0, 2 / 3, 1.0])
    assert [t.cluster for t in r.table] == pytest.approx([1.0, 0.0, 0.0])
    assert [t.max_degree for t in r.table] == [3, 2, 1]
    s = r.singletons
    assert (s.nodes, s.tokens, s.core, s.bh, s.edges) == (2, 4, 1, 1, 0)
    assert r.flood_fill == [4, 3, 1] and r.core_nodes == 8 and r.core_tokens == 16
    assert r.moons == 1 and r.outside_min_linf_median == 10  # E 2, G 10 and H 11 from F
    # BHs by population, ties by first occurrence: A(5), F(3), D(2), K(2)
    assert r.bh_populations == [5, 3, 2, 2]
    assert r.bh_linf == [[0, 10, 1, 22], [10, 0, 10, 12], [1, 10, 0, 21], [22, 12, 21, 0]]
    z = r.zones
    assert (z.core_vectors, z.core_tokens, z.core_bh) == (3, 8, 2)  # A, B, D within one cell (0.0078 < 0.01)
    assert (z.oort_vectors, z.oort_tokens, z.oort_bh) == (8, 11, 2)
    assert z.farthest_token == where["K"][0] and z.max_distance == pytest.approx(22 * 2**-7)
    assert sum(b["tokens"] for b in z.bands) == 19
    j = r.to_json()
    assert json.loads(json.dumps(j))["table"][0]["nodes"] == 4
    text = bh.format_report(r)
    assert "Sing" in text and "flood fill" in text


def test_relaxed_graph_pulls_in_the_moon(hand_lattice):
    bits, _ = hand_lattice
    c = bh.census(bits)
    r = bh.frozen_smoke(bits, c, adjacency_k=2)
    assert r.table[0].nodes == 5 and r.table[0].tokens == 10  # K4 + E
    assert r.core_nodes == 8  # the core stays the strict flood fill


def test_medoid_center_and_bad_arguments(hand_lattice):
    bits, where = hand_lattice
    c = bh.census(bits)
    r = bh.frozen_smoke(bits, c, center="medoid")
    # the medoid minimises the population-weighted sum of L2 distances to all selected tokens
    sel = np.array([i for name, rows in where.items() if name != "far" for i in rows])
    vals = bits[sel].astype(np.uint32) << 16
    vals = vals.view(np.float32).astype(np.float64)
    cost = np.sqrt(((vals[:, None] - vals[None]) ** 2).sum(-1)).sum(1)
    assert cost[list(sel).index(r.zones.center_token)] == pytest.approx(cost.min())
    assert r.zones.center_token not in where["A"]  # so it differs from the anchor here
    with pytest.raises(ValueError, match="center"):
        bh.frozen_smoke(bits, c, center="mean")
    with pytest.raises(ValueError, match="census"):
        bh.frozen_smoke(bits[:-1], c)
    # an explicit anchor that is not its group's first row: the zones centre on its vector all the same
    r = bh.frozen_smoke(bits, c, anchor=where["D"][1], zone_radius=0.01)
    assert r.anchor_token == where["D"][1] and r.zones.center_token == where["D"][0]
    assert (r.zones.core_vectors, r.zones.core_tokens) == (3, 8)  # D, A and C within one cell
    with pytest.raises(ValueError, match="outside the matrix"):
        bh.frozen_smoke(bits, c, anchor=len(bits))
    with pytest.raises(ValueError, match="holds 11 unique vectors, more than max_nodes = 10"):
        bh.frozen_smoke(bits, c, max_nodes=10)
    with pytest.raises(ValueError, match="no black holes"):
        bh.anchor_row(bh.census(np.arange(12, dtype=np.uint16).reshape(4, 3)))


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(8)
    score = rng.integers(0, 5, size=60).astype(float)  # many ties
    pos = rng.random(60) < 0.3
    p, q = score[pos][:, None], score[~pos][None, :]
    brute = ((p > q).sum() + 0.5 * (p == q).sum()) / (p.size * q.size)
    assert bh._auc(score, pos) == pytest.approx(brute)
    assert bh._auc(score, np.zeros(60, dtype=bool)) is None


def test_undertrained_indicators_flag_rows_left_near_their_start():
    rng = np.random.default_rng(9)
    shared = rng.normal(size=16) * 3  # a common direction every row carries (what the first PC removes)
    trained = rng.normal(size=(300, 16)) + shared
    start = rng.normal(size=16) * 0.05
    unused = start + rng.normal(size=(30, 16)) * 0.002 + shared * 0.01
    x = np.vstack([trained, unused]).astype(np.float32)
    x[[300, 301, 302]] = x[300]  # three untouched rows that are bit-identical: a black hole
    ind = bh.undertrained_indicators(x, reference_rows=np.arange(310, 330))  # only some unused rows are known
    assert ind.cosine[300:].min() > 0.9 and np.median(np.abs(ind.cosine[:300])) < 0.5
    assert ind.norm[300:].max() < ind.norm[:300].min()
    cmp = ind.compare(bh.census(x))
    assert cmp["reference"]["rows"] == 20 and cmp["black_hole"]["rows"] == 3
    assert cmp["auc_cosine_reference"] > 0.9 and cmp["auc_cosine_black_hole"] > 0.9
    with pytest.raises(ValueError, match="reference_rows"):
        bh.undertrained_indicators(x, reference_rows=[400])
