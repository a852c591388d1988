"""Shared fixtures for the lattice / black-hole tests: a hand-built lattice configuration with a known table."""

import sys
from pathlib import Path

import numpy as np
import pytest

# --import-mode=importlib does not put the repo root on sys.path; the package is not installed in CI either.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASE = 0x3F90  # 1.125: every cell offset below stays inside the binade [1, 2), ULP 2**-7
# name: (cell offsets in the first 3 dims, population)
NODES = {
    "A": ((0, 0, 0), 5),  # the anchor (largest BH); A, B, C, D form a K4 (every pair at L∞ = 1)
    "B": ((1, 0, 0), 1),
    "C": ((1, 1, 0), 1),
    "D": ((0, 1, 0), 2),
    "E": ((3, 0, 0), 1),  # a moon: L∞ = 2 from B and C
    "F": ((10, 10, 0), 3),  # an isolated BH
    "G": ((20, 0, 0), 1),  # G–H: a two-node component without a BH
    "H": ((21, 0, 1), 1),
    "I": ((0, 20, 0), 1),  # I–J–K: a path reached from the BH K
    "J": ((0, 21, 0), 1),
    "K": ((0, 22, 0), 2),
}
D = 8  # dims 3…7 are shared by everyone


@pytest.fixture
def hand_lattice():
    """(bits (V, D) uint16, {name: row positions}) with rows shuffled, plus one far row in another binade."""
    rng = np.random.default_rng(7)
    tail = rng.integers(0x3F80, 0x4000, size=D - 3).astype(np.uint16)
    rows, names = [], []
    for name, (off, pop) in NODES.items():
        vec = np.concatenate([BASE + np.array(off), tail]).astype(np.uint16)
        rows += [vec] * pop
        names += [name] * pop
    far = np.concatenate([[0x3B90, 0x3B90, 0x3B90], tail]).astype(np.uint16)  # exponent 119 vs 127: distance 8
    rows.append(far)
    names.append("far")
    # shuffle, but keep D's first row before K's so BH ties (D and K both hold 2) order as D, K
    order = rng.permutation(len(rows))
    pos_d = [i for i, o in enumerate(order) if names[o] == "D"]
    pos_k = [i for i, o in enumerate(order) if names[o] == "K"]
    if min(pos_k) < min(pos_d):
        a, b = min(pos_k), min(pos_d)
        order[a], order[b] = order[b], order[a]
    bits = np.stack([rows[o] for o in order])
    where = {}
    for i, o in enumerate(order):
        where.setdefault(names[o], []).append(i)
    return bits, where
