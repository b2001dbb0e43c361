"""Both samplers draw exactly softmax(logits / T): statistical and exact properties.

Every chi-square test below has false-alarm rate ALPHA (tests/stats.py) at its
fixed seed and runs for both samplers (gumbel and inverse_cdf); power tests show
the same test rejects a wrong sampler.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from charlm_jax.errors import CharLMError
from charlm_jax.settings.config import SAMPLERS
from charlm_jax.use.sampling import (
    draw_noise,
    entropy_bits,
    first_max_index,
    repetition_penalty,
    sample,
    sample_with_noise,
    tempered_logits,
)

from stats import ALPHA, chi_square_p_value, softmax64

DRAWS = 40_000
HYPOTHESIS = settings(max_examples=15, deadline=None, derandomize=True)


# Rows are padded with -inf to this width, so every row length shares one compiled sampler (and the
# padding, never drawn, is checked on every call).
PADDED_WIDTH = 16
compiled_sample = jax.jit(sample, static_argnames=("top_k", "sampler"))


def padded_row(logits) -> np.ndarray:
    """``logits`` followed by ids of probability 0, up to PADDED_WIDTH."""
    width = len(logits)
    padded = np.full(max(PADDED_WIDTH, width), -np.inf, np.float32)
    padded[:width] = logits
    return padded


compiled_tempered_logits = jax.jit(tempered_logits, static_argnames=("top_k",))


def draw_counts(logits, temperature, n=DRAWS, seed=0, sampler="gumbel", **filters):
    """Counts of n independent draws for one row of logits."""
    width = len(logits)
    padded = padded_row(logits)
    batch = jnp.broadcast_to(jnp.asarray(padded), (n, len(padded)))
    ids = np.asarray(compiled_sample(jax.random.key(seed), batch, temperature, sampler=sampler, **filters))
    counts = np.bincount(ids, minlength=len(padded))
    assert not counts[width:].any(), "an id of probability 0 was drawn"
    return counts[:width]


both_samplers = pytest.mark.parametrize("sampler", SAMPLERS)


def book_sample_probs(preds, temperature):
    """The distribution of the book's numpy sample(preds, T) (Deep Learning with Python, 8.1)."""
    preds = np.asarray(preds).astype("float64")
    preds = np.log(preds) / temperature
    exp_preds = np.exp(preds)
    return exp_preds / np.sum(exp_preds)


# No subnormal floats: XLA flushes them to zero, so 1e-45 and 0 are a tie on the device while
# numpy still orders them (hypothesis found this with logits [0, 1, 1, 1.4e-45] and top-k 3).
logit_rows = st.lists(st.floats(-8, 8, allow_nan=False, allow_subnormal=False, width=32), min_size=2, max_size=12)
temperatures = st.sampled_from([0.2, 0.5, 1.0, 1.2, 2.0])


@both_samplers
@HYPOTHESIS
@given(logit_rows, temperatures)
def test_frequencies_match_float64_softmax_of_logits_over_t(sampler, logits, temperature):
    counts = draw_counts(logits, temperature, sampler=sampler)
    assert chi_square_p_value(counts, softmax64(logits, temperature)) > ALPHA


@pytest.mark.parametrize("temperature", [0.5, 2.0])
@both_samplers
def test_chi_square_has_power_against_the_wrong_temperature(temperature, sampler):
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
    counts = draw_counts(logits, temperature, sampler=sampler)
    assert chi_square_p_value(counts, softmax64(logits, temperature)) > ALPHA
    wrong = softmax64(logits * temperature, 1.0)  # logits * T instead of logits / T
    assert chi_square_p_value(counts, wrong) < 1e-12


@both_samplers
@HYPOTHESIS
@given(logit_rows)
def test_tiny_temperature_is_argmax_and_zero_is_exactly_greedy(sampler, logits):
    logits = np.asarray(logits, np.float32)
    top_two = np.sort(logits)[-2:]
    assume(top_two[1] - top_two[0] >= 1e-3)  # a near-tie: argmax is not well defined at T = 1e-6 either
    for temperature in (1e-6, 0.0):
        counts = draw_counts(logits, temperature, n=2000, sampler=sampler)
        assert counts[np.argmax(logits)] == 2000


@both_samplers
def test_huge_temperature_is_uniform_over_unmasked_ids(sampler):
    logits = np.array([5.0, -np.inf, 0.0, -3.0, -np.inf, 1.0], np.float32)
    counts = draw_counts(logits, 1e6, sampler=sampler)
    uniform = np.where(np.isfinite(logits), 1.0, 0.0)
    assert chi_square_p_value(counts, uniform / uniform.sum()) > ALPHA


@both_samplers
@HYPOTHESIS
@given(st.lists(st.integers(-64, 64), min_size=2, max_size=10), st.integers(-1000, 1000), temperatures)
def test_adding_a_constant_to_the_logits_changes_nothing(sampler, eighths, constant, temperature):
    # Logits on a grid of 1/8 keep the shift exact in float32, so draws must match bit for bit.
    logits = padded_row(np.asarray(eighths, np.float32) / 8)
    keys = jax.random.split(jax.random.key(1), 64)
    np.testing.assert_array_equal(
        draws_per_key(keys, logits, temperature, sampler), draws_per_key(keys, logits + constant, temperature, sampler)
    )


@functools.partial(jax.jit, static_argnames="sampler")
def draws_per_key(keys, row, temperature, sampler):
    """One draw from ``row`` per key."""
    return jax.vmap(lambda key: sample(key, row, temperature, sampler=sampler))(keys)


@HYPOTHESIS
@given(logit_rows)
def test_entropy_grows_with_temperature(logits):
    temps = [0.1, 0.2, 0.5, 1.0, 1.2, 2.0, 5.0]
    entropies = [float(entropy_bits(tempered_logits(jnp.asarray(logits), t))) for t in temps]
    assert all(b >= a - 1e-4 for a, b in zip(entropies, entropies[1:]))


@both_samplers
@HYPOTHESIS
@given(logit_rows, st.integers(1, 5), temperatures)
def test_top_k_draws_only_from_the_k_largest_renormalised(sampler, logits, k, temperature):
    logits = np.asarray(logits, np.float32)
    kth = np.sort(logits)[::-1][min(k, len(logits)) - 1]
    allowed = logits >= kth  # ties with the k-th are kept
    counts = draw_counts(logits, temperature, n=20_000, top_k=k, sampler=sampler)
    assert counts[~allowed].sum() == 0
    expected = np.where(allowed, softmax64(logits, temperature), 0.0)
    assert chi_square_p_value(counts, expected / expected.sum()) > ALPHA


def top_p_reference(logits, temperature, p):
    """Smallest set of most likely ids whose tempered mass reaches p (float64)."""
    probs = softmax64(logits, temperature)
    order = np.argsort(-probs, kind="stable")
    mass_before = np.cumsum(probs[order]) - probs[order]
    keep = np.zeros(len(probs), bool)
    keep[order[mass_before < p]] = True
    return keep, probs


@both_samplers
@HYPOTHESIS
@given(logit_rows, st.sampled_from([0.3, 0.5, 0.8, 0.95]), temperatures)
def test_top_p_keeps_the_smallest_set_reaching_p(sampler, logits, p, temperature):
    keep, probs = top_p_reference(logits, temperature, p)
    # Skip knife-edge cases where float32 vs float64 rounding could move the boundary.
    sorted_probs = np.sort(probs)[::-1]
    edges = np.abs(np.cumsum(sorted_probs) - p)
    assume(edges.min() >= 1e-4 and len(np.unique(np.round(probs, 5))) == len(probs))
    masked = np.asarray(compiled_tempered_logits(jnp.asarray(padded_row(logits)), temperature, top_p=p))[: len(logits)]
    np.testing.assert_array_equal(np.isfinite(masked), keep)
    assert probs[keep].sum() >= p - 1e-6
    # Smallest: dropping the least likely kept id falls below p.
    if keep.sum() > 1:
        assert probs[keep].sum() - probs[keep].min() < p
    counts = draw_counts(logits, temperature, n=20_000, top_p=p, sampler=sampler)
    expected = np.where(keep, probs, 0.0)
    assert chi_square_p_value(counts, expected / expected.sum()) > ALPHA


def test_min_p_drops_ids_below_a_fraction_of_the_most_likely():
    logits = np.log(np.array([0.5, 0.3, 0.1, 0.06, 0.04]))
    masked = np.asarray(tempered_logits(jnp.asarray(logits, jnp.float32), 1.0, min_p=0.15))
    np.testing.assert_array_equal(np.isfinite(masked), [True, True, True, False, False])


@both_samplers
def test_per_row_temperatures_are_independent(sampler):
    logits = np.array([1.5, 0.5, 0.0, -0.5, -2.0], np.float32)
    temps = np.array([0.2, 1.0, 2.5, 0.0], np.float32)
    n = 20_000
    batch = jnp.broadcast_to(jnp.asarray(logits), (n, 4, 5))
    ids = np.asarray(sample(jax.random.key(5), batch, jnp.asarray(temps), sampler=sampler))  # (n, 4)
    for row, temperature in enumerate(temps[:3]):
        counts = np.bincount(ids[:, row], minlength=5)
        assert chi_square_p_value(counts, softmax64(logits, temperature)) > ALPHA
    assert np.all(ids[:, 3] == 0)  # greedy row
    # Rows are independent: the joint counts of rows 1 and 2 factorise.
    joint = np.zeros((5, 5))
    np.add.at(joint, (ids[:, 1], ids[:, 2]), 1)
    from scipy.stats import chi2_contingency

    nonempty = joint[joint.sum(1) > 0][:, joint.sum(0) > 0]
    assert chi2_contingency(nonempty).pvalue > ALPHA


@both_samplers
def test_same_key_repeats_split_keys_differ(sampler):
    logits = jnp.zeros((1000, 20))
    key = jax.random.key(9)
    first, second = jax.random.split(key)
    draw = lambda k: sample(k, logits, sampler=sampler)  # noqa: E731
    np.testing.assert_array_equal(draw(key), draw(key))
    assert not np.array_equal(draw(first), draw(second))


@both_samplers
@HYPOTHESIS
@given(st.lists(st.floats(0.01, 1.0), min_size=2, max_size=10), temperatures)
def test_distribution_equals_the_books_numpy_sample(sampler, weights, temperature):
    preds = np.asarray(weights) / np.sum(weights)  # a softmax output, as the book's model gives
    book = book_sample_probs(preds, temperature)
    ours = softmax64(np.log(preds), temperature)  # what sample(key, logits=log(preds), T) targets
    np.testing.assert_allclose(ours, book, rtol=1e-9, atol=1e-12)
    counts = draw_counts(np.log(preds).astype(np.float32), temperature, n=20_000, sampler=sampler)
    assert chi_square_p_value(counts, book) > ALPHA


@both_samplers
def test_where_the_book_breaks_we_do_not(sampler):
    preds = np.array([0.7, 0.3, 0.0])  # a probability of exactly 0
    with np.errstate(divide="ignore", invalid="ignore"):
        book = book_sample_probs(preds, 0.5)
    assert book[2] == 0  # log(0) = -inf happens to give 0 here...
    with np.errstate(divide="ignore", invalid="ignore"):
        assert np.isnan(book_sample_probs(np.array([0.0, 0.0, 1.0]) * 0, 0.5)).all()  # ...and NaN there
    logits = jnp.asarray([[0.0, -np.inf, 3.0]] * 5000, jnp.float32)
    counts = np.bincount(np.asarray(sample(jax.random.key(0), logits, 0.5, sampler=sampler)), minlength=3)
    assert counts[1] == 0


@both_samplers
def test_masked_ids_are_never_drawn_and_huge_logits_give_no_nan(sampler):
    logits = jnp.asarray([[3e38, -np.inf, 3e38, -3e38]] * 4000, jnp.float32)
    ids = np.asarray(sample(jax.random.key(2), logits, 1.0, sampler=sampler))
    assert set(np.unique(ids)) <= {0, 2} and len(np.unique(ids)) == 2
    tempered = np.asarray(tempered_logits(logits[:1], 1e-6))
    assert not np.isnan(tempered).any()


@pytest.mark.parametrize(
    "logits,temperature,fragment",
    [
        ([0.0, np.nan], 1.0, "NaN or \\+inf"),
        ([0.0, np.inf], 1.0, "NaN or \\+inf"),
        ([-np.inf, -np.inf], 1.0, "all -inf"),
        ([0.0, 1.0], -0.1, "temperature must be >= 0"),
        ([0.0, 1.0], np.nan, "temperature must be >= 0"),
    ],
)
def test_bad_inputs_are_refused_at_the_boundary(logits, temperature, fragment):
    with pytest.raises(CharLMError, match=fragment):
        sample(jax.random.key(0), jnp.asarray(logits, jnp.float32), temperature)


def test_bad_filters_are_refused():
    logits = jnp.zeros(4)
    for kwargs, fragment in [
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"min_p": 1.5}, "min_p"),
        ({"sampler": "beam"}, "sampler must be one of"),
    ]:
        with pytest.raises(CharLMError, match=fragment):
            sample(jax.random.key(0), logits, 1.0, **kwargs)


@both_samplers
def test_sampler_is_jit_and_vmap_compatible(sampler):
    logits = jax.random.normal(jax.random.key(0), (8, 6))
    temps = jnp.linspace(0.0, 2.0, 8)
    keys = jax.random.split(jax.random.key(1), 8)
    jitted = jax.jit(lambda k, x, t: sample(k, x, t, top_k=3, top_p=0.9, sampler=sampler))
    mapped = jax.vmap(lambda k, x, t: sample(k, x, t, top_k=3, top_p=0.9, sampler=sampler))
    a, b = jitted(keys[0], logits, temps), mapped(keys, logits, temps)
    assert a.shape == b.shape == (8,)
    np.testing.assert_array_equal(a[0], jnp.argmax(logits[0]))  # row 0 has T = 0
    # Each vmapped row is the draw one call on that row alone makes with the same key.
    alone = [sample(keys[i], logits[i], temps[i], top_k=3, top_p=0.9, sampler=sampler) for i in range(8)]
    np.testing.assert_array_equal(np.asarray(b), np.asarray(alone))


def test_gumbel_is_exactly_jax_random_categorical_of_the_tempered_logits():
    logits = jax.random.normal(jax.random.key(3), (64, 30)) * 3
    temps = jnp.linspace(0.1, 2.0, 64)
    for seed in range(5):
        key = jax.random.key(seed)
        ours = sample(key, logits, temps, top_k=10, sampler="gumbel")
        theirs = jax.random.categorical(key, tempered_logits(logits, temps, top_k=10), axis=-1)
        np.testing.assert_array_equal(ours, theirs)


@both_samplers
def test_noise_drawn_apart_gives_the_same_draw(sampler):
    """Generation draws a chunk of steps' noise at once; each step must get what sample() would draw."""
    logits = jax.random.normal(jax.random.key(4), (16, 9))
    keys = jax.random.split(jax.random.key(5), 8)
    noise = jax.vmap(lambda k: draw_noise(k, logits.shape, sampler))(keys)
    for key, step_noise in zip(keys, noise):
        np.testing.assert_array_equal(
            sample(key, logits, 0.7, sampler=sampler), sample_with_noise(step_noise, logits, 0.7, sampler=sampler)
        )


def test_inverse_cdf_never_draws_a_masked_id_even_at_the_edges_of_u():
    # Uniforms at 0, just below 1 and exactly on cumulative boundaries; masked ids at both ends and inside.
    logits = jnp.asarray([[-np.inf, 0.0, -np.inf, np.log(3.0), -np.inf]] * 6, jnp.float32)
    uniforms = jnp.asarray([0.0, 0.25, 0.25 - 2**-24, 0.5, 1 - 2**-23, 0.9999999], jnp.float32)
    ids = np.asarray(sample_with_noise(uniforms, logits, 1.0, sampler="inverse_cdf"))
    np.testing.assert_array_equal(ids, [1, 3, 1, 3, 3, 3])  # weights 1 : 3, so [0, .25) -> 1, [.25, 1) -> 3


@pytest.mark.parametrize("penalty", [1.5, 0.7])
def test_repetition_penalty_is_ctrls_definition(penalty):
    logits = jnp.asarray([[2.0, -1.0, 0.5, -3.0, 0.0]])
    present = jnp.asarray([[True, True, False, False, True]])
    expected = [2.0 / penalty, -1.0 * penalty, 0.5, -3.0, 0.0]  # positive / R, negative * R, others kept
    np.testing.assert_allclose(np.asarray(repetition_penalty(logits, present, penalty))[0], expected, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([-np.inf, -1.0, 0.0, 0.5, 2.0]), min_size=1, max_size=9))
def test_first_max_index_is_argmax_ties_included(values):
    """The sampler's vectorised argmax picks the first of tied maxima, as jnp.argmax does."""
    row = np.asarray(values, np.float32)
    assert int(first_max_index(jnp.asarray(row))) == int(np.argmax(row))
