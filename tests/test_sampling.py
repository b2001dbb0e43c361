"""The sampler draws exactly softmax(logits / T): statistical and exact properties.

Every chi-square test below has false-alarm rate ALPHA (tests/stats.py) at its
fixed seed; power tests show the same test rejects a wrong sampler.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charlm_jax.errors import CharLMError
from charlm_jax.sampling import entropy_bits, sample, tempered_logits

from stats import ALPHA, chi_square_p_value, softmax64

DRAWS = 40_000
HYPOTHESIS = settings(max_examples=25, deadline=None, derandomize=True)


def draw_counts(logits, temperature, n=DRAWS, seed=0, **filters):
    """Counts of n independent draws for one row of logits."""
    batch = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(logits)))
    ids = np.asarray(sample(jax.random.key(seed), batch, temperature, **filters))
    return np.bincount(ids, minlength=len(logits))


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


@HYPOTHESIS
@given(logit_rows, temperatures)
def test_frequencies_match_float64_softmax_of_logits_over_t(logits, temperature):
    counts = draw_counts(logits, temperature)
    assert chi_square_p_value(counts, softmax64(logits, temperature)) > ALPHA


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_chi_square_has_power_against_the_wrong_temperature(temperature):
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
    counts = draw_counts(logits, temperature)
    assert chi_square_p_value(counts, softmax64(logits, temperature)) > ALPHA
    wrong = softmax64(logits * temperature, 1.0)  # logits * T instead of logits / T
    assert chi_square_p_value(counts, wrong) < 1e-12


@HYPOTHESIS
@given(logit_rows)
def test_tiny_temperature_is_argmax_and_zero_is_exactly_greedy(logits):
    logits = np.asarray(logits, np.float32)
    top_two = np.sort(logits)[-2:]
    if top_two[1] - top_two[0] < 1e-3:
        return  # a near-tie: argmax is not well defined at T = 1e-6 either
    for temperature in (1e-6, 0.0):
        counts = draw_counts(logits, temperature, n=2000)
        assert counts[np.argmax(logits)] == 2000


def test_huge_temperature_is_uniform_over_unmasked_ids():
    logits = np.array([5.0, -np.inf, 0.0, -3.0, -np.inf, 1.0], np.float32)
    counts = draw_counts(logits, 1e6)
    uniform = np.where(np.isfinite(logits), 1.0, 0.0)
    assert chi_square_p_value(counts, uniform / uniform.sum()) > ALPHA


@HYPOTHESIS
@given(st.lists(st.integers(-64, 64), min_size=2, max_size=10), st.integers(-1000, 1000), temperatures)
def test_adding_a_constant_to_the_logits_changes_nothing(eighths, constant, temperature):
    # Logits on a grid of 1/8 keep the shift exact in float32, so draws must match bit for bit.
    logits = jnp.asarray(eighths, jnp.float32)[None, :] / 8
    keys = jax.random.split(jax.random.key(1), 64)
    draw = jax.vmap(lambda k, x: sample(k, x, temperature))
    np.testing.assert_array_equal(draw(keys, jnp.repeat(logits, 64, 0)),
                                  draw(keys, jnp.repeat(logits + constant, 64, 0)))


@HYPOTHESIS
@given(logit_rows)
def test_entropy_grows_with_temperature(logits):
    temps = [0.1, 0.2, 0.5, 1.0, 1.2, 2.0, 5.0]
    entropies = [float(entropy_bits(tempered_logits(jnp.asarray(logits), t))) for t in temps]
    assert all(b >= a - 1e-4 for a, b in zip(entropies, entropies[1:]))


@HYPOTHESIS
@given(logit_rows, st.integers(1, 5), temperatures)
def test_top_k_draws_only_from_the_k_largest_renormalised(logits, k, temperature):
    logits = np.asarray(logits, np.float32)
    kth = np.sort(logits)[::-1][min(k, len(logits)) - 1]
    allowed = logits >= kth  # ties with the k-th are kept
    counts = draw_counts(logits, temperature, n=20_000, top_k=k)
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


@HYPOTHESIS
@given(logit_rows, st.sampled_from([0.3, 0.5, 0.8, 0.95]), temperatures)
def test_top_p_keeps_the_smallest_set_reaching_p(logits, p, temperature):
    keep, probs = top_p_reference(logits, temperature, p)
    # Skip knife-edge cases where float32 vs float64 rounding could move the boundary.
    sorted_probs = np.sort(probs)[::-1]
    edges = np.abs(np.cumsum(sorted_probs) - p)
    if edges.min() < 1e-4 or len(np.unique(np.round(probs, 5))) < len(probs):
        return
    masked = np.asarray(tempered_logits(jnp.asarray(logits), temperature, top_p=p))
    np.testing.assert_array_equal(np.isfinite(masked), keep)
    assert probs[keep].sum() >= p - 1e-6
    # Smallest: dropping the least likely kept id falls below p.
    if keep.sum() > 1:
        assert probs[keep].sum() - probs[keep].min() < p
    counts = draw_counts(logits, temperature, n=20_000, top_p=p)
    expected = np.where(keep, probs, 0.0)
    assert chi_square_p_value(counts, expected / expected.sum()) > ALPHA


def test_min_p_drops_ids_below_a_fraction_of_the_most_likely():
    logits = np.log(np.array([0.5, 0.3, 0.1, 0.06, 0.04]))
    masked = np.asarray(tempered_logits(jnp.asarray(logits, jnp.float32), 1.0, min_p=0.15))
    np.testing.assert_array_equal(np.isfinite(masked), [True, True, True, False, False])


def test_per_row_temperatures_are_independent():
    logits = np.array([1.5, 0.5, 0.0, -0.5, -2.0], np.float32)
    temps = np.array([0.2, 1.0, 2.5, 0.0], np.float32)
    n = 20_000
    batch = jnp.broadcast_to(jnp.asarray(logits), (n, 4, 5))
    ids = np.asarray(sample(jax.random.key(5), batch, jnp.asarray(temps)))  # (n, 4)
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


def test_same_key_repeats_split_keys_differ():
    logits = jnp.zeros((1000, 20))
    key = jax.random.key(9)
    first, second = jax.random.split(key)
    np.testing.assert_array_equal(sample(key, logits), sample(key, logits))
    assert not np.array_equal(sample(first, logits), sample(second, logits))


@HYPOTHESIS
@given(st.lists(st.floats(0.01, 1.0), min_size=2, max_size=10), temperatures)
def test_distribution_equals_the_books_numpy_sample(weights, temperature):
    preds = np.asarray(weights) / np.sum(weights)  # a softmax output, as the book's model gives
    book = book_sample_probs(preds, temperature)
    ours = softmax64(np.log(preds), temperature)  # what sample(key, logits=log(preds), T) targets
    np.testing.assert_allclose(ours, book, rtol=1e-9, atol=1e-12)
    counts = draw_counts(np.log(preds).astype(np.float32), temperature, n=20_000)
    assert chi_square_p_value(counts, book) > ALPHA


def test_where_the_book_breaks_we_do_not():
    preds = np.array([0.7, 0.3, 0.0])  # a probability of exactly 0
    with np.errstate(divide="ignore", invalid="ignore"):
        book = book_sample_probs(preds, 0.5)
    assert book[2] == 0  # log(0) = -inf happens to give 0 here...
    with np.errstate(divide="ignore", invalid="ignore"):
        assert np.isnan(book_sample_probs(np.array([0.0, 0.0, 1.0]) * 0, 0.5)).all()  # ...and NaN there
    logits = jnp.asarray([[0.0, -np.inf, 3.0]] * 5000, jnp.float32)
    counts = np.bincount(np.asarray(sample(jax.random.key(0), logits, 0.5)), minlength=3)
    assert counts[1] == 0


def test_masked_ids_are_never_drawn_and_huge_logits_give_no_nan():
    logits = jnp.asarray([[3e38, -np.inf, 3e38, -3e38]] * 4000, jnp.float32)
    ids = np.asarray(sample(jax.random.key(2), logits, 1.0))
    assert set(np.unique(ids)) <= {0, 2} and len(np.unique(ids)) == 2
    tempered = np.asarray(tempered_logits(logits[:1], 1e-6))
    assert not np.isnan(tempered).any()


@pytest.mark.parametrize("logits,temperature,fragment", [
    ([0.0, np.nan], 1.0, "NaN or \\+inf"),
    ([0.0, np.inf], 1.0, "NaN or \\+inf"),
    ([-np.inf, -np.inf], 1.0, "all -inf"),
    ([0.0, 1.0], -0.1, "temperature must be >= 0"),
    ([0.0, 1.0], np.nan, "temperature must be >= 0"),
])
def test_bad_inputs_are_refused_at_the_boundary(logits, temperature, fragment):
    with pytest.raises(CharLMError, match=fragment):
        sample(jax.random.key(0), jnp.asarray(logits, jnp.float32), temperature)


def test_bad_filters_are_refused():
    logits = jnp.zeros(4)
    for kwargs, fragment in [({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"min_p": 1.5}, "min_p")]:
        with pytest.raises(CharLMError, match=fragment):
            sample(jax.random.key(0), logits, 1.0, **kwargs)


def test_sampler_is_jit_and_vmap_compatible():
    logits = jax.random.normal(jax.random.key(0), (8, 6))
    temps = jnp.linspace(0.0, 2.0, 8)
    keys = jax.random.split(jax.random.key(1), 8)
    jitted = jax.jit(lambda k, x, t: sample(k, x, t, top_k=3, top_p=0.9))
    mapped = jax.vmap(lambda k, x, t: sample(k, x, t, top_k=3, top_p=0.9))
    a, b = jitted(keys[0], logits, temps), mapped(keys, logits, temps)
    assert a.shape == b.shape == (8,)
    np.testing.assert_array_equal(a[0], jnp.argmax(logits[0]))  # row 0 has T = 0
