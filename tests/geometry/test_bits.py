"""experiments.bits on every bf16 bit pattern: conversions both ways, ULP, ordinal distance, stochastic
rounding (exact on the lattice, unbiased between neighbours, the noise's arithmetic) and the row-cosine
convention (NaN where undefined unless the caller says otherwise)."""

import ml_dtypes
import numpy as np
import pytest

from experiments import bits
from experiments.cloud import geometry
from experiments.lattice import lifecycle as lattice
from experiments.physics import adam

ALL = np.arange(1 << 16, dtype=np.uint16)
FINITE = ALL[(ALL & 0x7F80) != 0x7F80]
NAN = ALL[((ALL & 0x7F80) == 0x7F80) & ((ALL & 0x007F) != 0)]


def test_every_pattern_round_trips_through_float32_and_float64():
    f32 = bits.to_float32(ALL)
    assert f32.dtype == np.float32
    assert np.array_equal(f32, ALL.view(ml_dtypes.bfloat16).astype(np.float32), equal_nan=True)
    with np.errstate(invalid="ignore"):  # NaN patterns through the cast
        back = bits.from_float32(f32)
    # every finite value and ±inf comes back bit for bit; NaNs stay NaN (the cast may quiet their payload)
    keep = ~np.isnan(f32)
    assert np.array_equal(back[keep], ALL[keep])
    assert np.isnan(bits.to_float32(back[~keep])).all() and (~keep).sum() == NAN.size
    f64 = bits.as_values(ALL[keep])
    assert f64.dtype == np.float64 and np.array_equal(f64, f32[keep].astype(np.float64))
    assert np.array_equal(bits.as_values(ALL[keep].view(ml_dtypes.bfloat16)), f64)
    assert bits.as_values(np.float32([0.5, -0.25])).tolist() == [0.5, -0.25]  # floats as they are


def test_views_never_round():
    x = np.array([1.0, -0.5, 3.0e-3], dtype=ml_dtypes.bfloat16)
    assert bits.as_bits(x).base is not None and np.array_equal(bits.as_bits(x), x.view(np.uint16))
    assert bits.as_bf16(x.view(np.uint16)).dtype.name == "bfloat16"
    assert bits.is_bf16(x) and bits.is_bf16(x.view(np.uint16)) and not bits.is_bf16(np.float32([1.0]))
    with pytest.raises(TypeError):
        bits.as_bits(np.float32([1.0]))


def test_rounding_to_nearest_even_is_the_casts():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=100_000) * 10.0 ** rng.integers(-40, 38, 100_000)).astype(np.float32)
    assert np.array_equal(bits.from_float32(x), x.astype(ml_dtypes.bfloat16).view(np.uint16))
    # halfway between 1 and 1 + 2**-7 goes to the even neighbour (1), just above it goes up
    assert bits.from_float32(np.float32([1 + 2**-8, 1 + 2**-8 + 2**-20])).tolist() == [0x3F80, 0x3F81]


def test_ulp_is_the_gap_to_the_next_pattern():
    pos = FINITE[(FINITE < 0x7F7F) & (FINITE >= 0x0080)]  # normal positives below the largest
    gap = bits.to_float32(pos + 1).astype(np.float64) - bits.to_float32(pos).astype(np.float64)
    assert np.array_equal(bits.ulp(pos).astype(np.float64), gap)
    assert bits.ulp(np.uint16([0x0000, 0x8000, 0x0001])).tolist() == [2.0**-133] * 3
    with pytest.raises(ValueError, match="inf/NaN"):
        bits.ulp(np.uint16([0x3F80, 0x7F80]))


def test_ordinal_is_monotone_and_counts_patterns_on_all_finite_values():
    o = bits.ordinal(FINITE)
    assert o.dtype == np.int32
    values = bits.to_float32(FINITE)
    order = np.argsort(values, kind="stable")
    # sorted by value, ordinals never decrease; ±0 share ordinal 0; neighbours differ by exactly one
    assert np.all(np.diff(o[order]) >= 0)
    assert set(o[values == 0].tolist()) == {0}
    assert sorted(set(o.tolist())) == list(range(-0x7F7F, 0x7F7F + 1))
    assert bits.ordinal(np.uint16([0x3F80]))[0] - bits.ordinal(np.uint16([0x3F7F]))[0] == 1  # across a binade
    assert np.array_equal(bits.ordinal(FINITE.view(ml_dtypes.bfloat16)), o)
    with pytest.raises(ValueError):
        bits.ordinal(np.uint16([0xFFC0]))
    assert bits.ordinal(np.uint16([0x7F80, 0xFF80]), check=False).tolist() == [0x7F80, -0x7F80]
    assert lattice.ordinal is bits.ordinal  # one definition, re-exported


def test_float32_ordinal_counts_float32_steps():
    x = np.float32([1.0, np.nextafter(np.float32(1.0), np.float32(2.0)), -0.0, 0.0, -1e-45, 1e-45])
    o = bits.ordinal(x)
    assert o.dtype == np.int64
    assert o[1] - o[0] == 1 and o[2] == o[3] == 0 and o[5] - o[4] == 2
    with pytest.raises(ValueError):
        bits.ordinal(np.float32([np.inf]))
    with pytest.raises(TypeError):
        bits.ordinal(np.float64([1.0]))


def test_stochastic_rounding_is_exact_on_the_lattice_and_unbiased_between_neighbours():
    rng = np.random.default_rng(1)
    on = bits.to_float32(FINITE)
    assert np.array_equal(bits.stochastic_round(on, bits.random_low_bits(rng, on.shape)), FINITE)
    # a fraction f of the way up rounds the magnitude up with probability f, for both signs
    for f in (0.125, 0.5, 0.875):
        v = np.float32([1 + f * 2**-7, -(1 + f * 2**-7)])
        b = bits.stochastic_round(np.tile(v, (40_000, 1)), bits.random_low_bits(rng, (40_000, 2)))
        assert set(np.unique(np.abs(bits.to_float32(b))).tolist()) == {1.0, 1.0078125}
        assert np.allclose((np.abs(bits.to_float32(b)) > 1).mean(axis=0), f, atol=0.01)


def test_stochastic_rounding_noise_arithmetic_and_overwrite():
    x = np.float32([1 + 2**-9])  # its low 16 bits are 0x4000: noise ≥ 0xC000 carries into the bf16 part
    assert bits.stochastic_round(x, np.int64([0xBFFF])).tolist() == [0x3F80]
    assert bits.stochastic_round(x, np.int64([0xC000])).tolist() == [0x3F81]
    assert bits.stochastic_round(x, np.uint16([0xC000])).tolist() == [0x3F81]
    assert x.tolist() == [1 + 2**-9]  # not overwritten unless asked
    scratch = x.copy()
    assert bits.stochastic_round(scratch, np.uint16([0xC000]), overwrite=True).tolist() == [0x3F81]
    assert scratch.tolist() != [1 + 2**-9]  # the scratch buffer was used
    # the generator's noise is reproducible and drawn four 16-bit values per 64-bit word
    a = bits.random_low_bits(np.random.default_rng(5), (3, 7))
    assert a.dtype == np.uint16 and a.shape == (3, 7)
    assert np.array_equal(a, bits.random_low_bits(np.random.default_rng(5), (3, 7)))


def test_row_cosine_convention():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0], [0.0, 0.0]])
    got = bits.row_cosine(a, b)
    assert got[0] == 1.0 and got[2] == pytest.approx(-1.0)
    assert np.isnan(got[1]) and np.isnan(got[3])  # a zero row: undefined, NaN by default
    assert bits.row_cosine(a, b, undefined=0.0).tolist()[1::2] == [0.0, 0.0]  # the thrust period's choice
    assert np.isnan(bits.row_cosine(np.array([np.inf, 1.0]), np.array([1.0, 1.0])))  # not finite: undefined
    # the centroid path reports a standing centroid's straightness as NaN (geometry's pages skip it)
    w = np.zeros((4, 3, 2))
    w[1:] += 0.25
    path = geometry.centroid_path(geometry.cloud_track(w))
    assert np.isnan(path.straightness[2])


def test_the_old_names_are_the_new_functions():
    assert adam.bf16_to_f32 is bits.to_float32 and adam.f32_to_bf16 is bits.from_float32
    assert lattice.to_float32 is bits.to_float32 and geometry.as_values is bits.as_values
