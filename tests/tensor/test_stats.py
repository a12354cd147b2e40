import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from superweight.tensor.stats import abs_argmax, dominance, rank_by_magnitude, top_product


def test_abs_argmax_keeps_the_sign():
    assert abs_argmax(torch.tensor([[1.0, -5.0], [2.0, 3.0]])) == (-5.0, 0, 1)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=20), st.integers(0, 19))
def test_dominance_is_a_share(values, k):
    x = torch.tensor(values)
    w = torch.ones_like(x)
    k = k % len(values)
    d = dominance(x, w, k)
    assert 0.0 <= d <= 1.0 + 1e-6
    if x.abs().sum() > 0:
        assert abs(sum(dominance(x, w, i) for i in range(len(values))) - 1.0) < 1e-4


def test_top_product_and_rank():
    assert top_product(torch.tensor([10.0, 1.0, 5.0]), torch.tensor([0.1, 2.0, 1.0])) == 2
    w = torch.tensor([[1.0, -9.0], [3.0, 2.0]])
    assert rank_by_magnitude(w, 0, 1) == 1 and rank_by_magnitude(w, 1, 0) == 2
