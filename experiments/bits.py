"""bf16 bit patterns: the one home for reading, converting, measuring and rounding them.

bf16 data travels as ``uint16`` bit patterns (or ``ml_dtypes.bfloat16`` arrays, which are viewed as their
bits): the bits are the ground truth, and converting to float first would hide which lattice cell a value
occupies. Everything that turns bits into values or values into bits lives here; `experiments.lattice.lifecycle`
builds the lattice geometry (coordinates, displacements, lifecycles) on top of it.

bf16 layout: 1 sign bit, 8 exponent bits (bias 127), 7 mantissa bits; it is the top half of a float32, so
widening is exact (`to_float32`, `as_values`) and narrowing rounds (`from_float32`: to nearest even, the
cast of torch and ml_dtypes; `stochastic_round`: the rig's fp32-master-sr rounding). For a raw exponent
field E the spacing of representable values in that binade is ``ULP = 2**(E − 134)`` (134 = 127 + 7); zero
and subnormals (E = 0) share the spacing of the first normal binade, ``2**−133``. Infinities and NaNs
(E = 255) have no lattice position: `ulp` and `ordinal` reject them with a ``ValueError`` that says where
the first one is (`ordinal(..., check=False)` counts them too, for comparing possibly damaged data).

Row cosines (`row_cosine`) follow one convention: where either row is zero (or the quotient is not finite)
the cosine is undefined and reported as NaN, so a mean over rows says so instead of averaging in a made-up
number; a caller that wants another value for undefined rows says so with ``undefined=`` (the thrust
period's step-one table averages with 0, see `experiments.physics.thrust`).

Checked in tests/geometry/test_bits.py (all 65,536 patterns).
"""

from __future__ import annotations

import numpy as np

EXPONENT_BIAS = 127
MANTISSA_BITS = 7
_ULP_OFFSET = EXPONENT_BIAS + MANTISSA_BITS  # 134
_SIGN = np.uint16(0x8000)
_MAGNITUDE = np.uint16(0x7FFF)


# ---------------------------------------------------------------------------------------------------------
# bit patterns and values


def is_bf16(x) -> bool:
    """True for arrays that hold bf16 data: uint16 bit patterns or an ml_dtypes.bfloat16 array."""
    dtype = np.asarray(x).dtype
    return dtype == np.uint16 or dtype.name == "bfloat16"


def as_bits(x) -> np.ndarray:
    """Return bf16 data as a uint16 bit-pattern array (a view when possible, never a rounding)."""
    a = np.asarray(x)
    if a.dtype == np.uint16:
        return a
    if a.dtype.name == "bfloat16":
        return a.view(np.uint16)
    raise TypeError(f"expected uint16 bf16 bit patterns or an ml_dtypes.bfloat16 array, got dtype {a.dtype}")


def as_bf16(bits: np.ndarray) -> np.ndarray:
    """uint16 bit patterns viewed as an ml_dtypes.bfloat16 array (no copy, no rounding)."""
    import ml_dtypes

    return bits.view(ml_dtypes.bfloat16)


def to_float32(bits) -> np.ndarray:
    """Exact float32 values of bf16 bit patterns (bf16 is the top half of a float32)."""
    b = as_bits(bits)
    return (b.astype(np.uint32) << 16).view(np.float32)


def as_values(arr) -> np.ndarray:
    """float64 values of a block: bf16 bit patterns (uint16 or ml_dtypes bfloat16) exactly, floats as they are
    (the recordings of fp32 runs are float32)."""
    a = np.asarray(arr)
    if is_bf16(a):
        return as_bf16(a).astype(np.float64)  # exact, and 7x faster than via to_float32
    return a.astype(np.float64)


def from_float32(values) -> np.ndarray:
    """Round float32 values to bf16 (round to nearest even) and return the uint16 bits."""
    import ml_dtypes

    return np.asarray(values, dtype=np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


# ---------------------------------------------------------------------------------------------------------
# the lattice of one element: exponent, ULP, position on the number line


def exponent_field(bits) -> np.ndarray:
    """Raw 8-bit exponent field E of each element (int16, so differences never wrap)."""
    return ((as_bits(bits) >> 7) & 0xFF).astype(np.int16)


def check_finite(bits, what: str = "bf16 data") -> None:
    """Raise ValueError if any element is inf or NaN (exponent field 255): they have no lattice cell."""
    b = as_bits(bits)
    bad = (b & 0x7F80) == 0x7F80
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{what}: {int(bad.sum())} inf/NaN element(s), first at index {first}; "
                         "they have no bf16 lattice position")


def ulp(bits) -> np.ndarray:
    """Per-element bf16 ULP = 2**(E − 134) as float32; E = 0 (zero, subnormal) uses 2**−133."""
    check_finite(bits)
    e = exponent_field(bits)
    e = np.maximum(e, 1)
    return np.ldexp(np.float32(1.0), (e - _ULP_OFFSET).astype(np.int32)).astype(np.float32)


def ordinal(x, check: bool = True) -> np.ndarray:
    """Sign-aware integer position of each value on its number line: bf16 bits (int32) or float32 (int64).

    ``+magnitude`` for positive values and ``−magnitude`` for negative ones, where magnitude is the bit
    pattern without the sign. Between same-sign values this is the bit-pattern difference (the seeds'
    adjacency), and it is correct across binades since IEEE bit patterns are monotone in value; so a
    difference of ordinals counts representable values (ULPs) between two numbers, everywhere. Across zero
    it counts the steps through zero; +0 and −0 are the same point (ordinal 0).

    bf16 data (uint16 / ml_dtypes.bfloat16) gives int32 positions, float32 values int64 ones. check=True
    rejects inf and NaN (no lattice position); check=False gives them the ordinal of their bit pattern
    (beyond every finite value), for comparing data that may be damaged.
    """
    a = np.asarray(x)
    if is_bf16(a):
        if check:
            check_finite(a)
        b = as_bits(a)
        mag = (b & _MAGNITUDE).astype(np.int32)
        return np.where(b & _SIGN, -mag, mag).astype(np.int32)
    if a.dtype != np.float32:
        raise TypeError(f"expected bf16 bit patterns or float32 values, got dtype {a.dtype}")
    if check and not np.isfinite(a).all():
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise ValueError(f"float32 data: inf/NaN element(s), first at index {first}; they have no position")
    u = np.ascontiguousarray(a).view(np.uint32).astype(np.int64)
    mag = u & 0x7FFFFFFF
    return np.where(u & 0x80000000, -mag, mag)


# ---------------------------------------------------------------------------------------------------------
# stochastic rounding


def random_low_bits(rng: np.random.Generator, shape) -> np.ndarray:
    """uint16 noise of `shape` for `stochastic_round` from a numpy generator: its raw 64-bit output read as
    four 16-bit draws (reproducible for a seeded generator, 4× fewer draws than one per element)."""
    n = int(np.prod(shape))
    return rng.bit_generator.random_raw(-(-n // 4)).view(np.uint16)[:n].reshape(shape)


def stochastic_round(values, noise, overwrite: bool = False) -> np.ndarray:
    """float32 → bf16 bits by adding 16 random low bits to the float32 bit pattern and cutting them.

    The training loop's fp32-master-sr rounding (``train._stochastic_round_``, tested against it in
    tests/rig/test_verify.py): a value a fraction f of the way from one bf16 neighbour to the next rounds
    its magnitude up (away from zero) with probability f, and a value already on the bf16 lattice comes back
    exactly. `noise`: integers in [0, 2¹⁶) broadcastable to `values` (the rig's recorded torch draws, or
    `random_low_bits`). overwrite=True uses a C-contiguous float32 `values` as scratch (its contents are
    destroyed) instead of copying it.
    """
    if overwrite and isinstance(values, np.ndarray) and values.dtype == np.float32 and values.flags.c_contiguous:
        u = values.view(np.uint32)
    else:
        u = np.array(values, dtype=np.float32, copy=True, order="C").view(np.uint32)
    np.add(u, noise, out=u, casting="unsafe")  # modulo 2³², as the bit pattern's carry into the exponent
    return np.right_shift(u, 16).astype(np.uint16)


# ---------------------------------------------------------------------------------------------------------
# row cosines


def row_cosine(a: np.ndarray, b: np.ndarray, undefined: float = np.nan) -> np.ndarray:
    """Row-wise cosine of two (..., D) float arrays (reduced over the last axis).

    Where either row is zero, or the cosine is not finite, it is undefined and the result holds `undefined`:
    NaN by default (the project's convention: averages skip or show it), 0.0 where a caller has decided
    that an undefined cosine counts as no alignment.
    """
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a * b).sum(axis=-1) / (na * nb)
    out = np.asarray(out)
    out[~((na > 0) & (nb > 0) & np.isfinite(out))] = undefined
    return out
