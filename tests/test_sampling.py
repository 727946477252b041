"""The shared sampling helpers (Gumbel, Plackett-Luce) and the one PCA helper."""

from __future__ import annotations

import itertools

import pytest
import torch

from recsim_mm.pca import principal_components
from recsim_mm.sampling import (
    gumbel_max,
    gumbel_noise,
    gumbel_top_k,
    plackett_luce_log_prob,
    plackett_luce_log_prob_and_entropy,
)


def test_gumbel_max_draws_follow_the_softmax():
    logits = torch.tensor([0.0, 1.0, -1.0, 2.0])
    n = 200_000
    draws = gumbel_max(logits.expand(n, -1), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / n
    p = torch.softmax(logits, 0)
    # 5 standard errors of a binomial proportion
    assert torch.all((freq - p).abs() < 5 * (p * (1 - p) / n).sqrt()), (freq, p)


def test_gumbel_top_k_slate_frequencies_match_the_plackett_luce_probabilities():
    logits = torch.tensor([0.5, -0.5, 1.0, 0.0])
    n, k = 200_000, 2
    slates = gumbel_top_k(logits.expand(n, -1), k, torch.Generator().manual_seed(1))
    assert all(len(set(row)) == k for row in slates[:1000].tolist())
    for slate in itertools.permutations(range(4), k):
        freq = (slates == torch.tensor(slate)).all(1).float().mean()
        p = plackett_luce_log_prob(logits.unsqueeze(0), torch.tensor([slate])).exp()[0]
        assert abs(freq - p) < 5 * (p * (1 - p) / n).sqrt(), (slate, float(freq), float(p))


def test_plackett_luce_probabilities_of_all_ordered_slates_sum_to_one():
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    slates = torch.tensor(list(itertools.permutations(range(5), 3)))  # (60, 3)
    for row in logits:
        p = plackett_luce_log_prob(row.expand(len(slates), -1), slates).exp()
        assert abs(float(p.sum()) - 1.0) < 1e-12


def test_one_item_slate_entropy_is_the_softmax_entropy():
    logits = torch.randn(6, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, entropy = plackett_luce_log_prob_and_entropy(logits, torch.zeros(6, 1, dtype=torch.int64))
    expected = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(entropy, expected, atol=1e-12)


def test_a_draw_consumes_one_uniform_of_the_logits_shape_from_the_generator():
    logits = torch.randn(4, 6)
    generator = torch.Generator().manual_seed(4)
    gumbel_top_k(logits, 3, generator)
    reference = torch.Generator().manual_seed(4)
    torch.rand(logits.shape, generator=reference)
    assert torch.equal(torch.rand(5, generator=generator), torch.rand(5, generator=reference))
    again = gumbel_top_k(logits, 3, torch.Generator().manual_seed(4))
    assert torch.equal(again, gumbel_top_k(logits, 3, torch.Generator().manual_seed(4)))


def test_gumbel_noise_is_finite_even_for_a_zero_uniform_draw(monkeypatch):
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.zeros(shape, dtype=kw.get("dtype")))
    noise = gumbel_noise((3,))
    assert torch.isfinite(noise).all() and float(noise.max()) < -3.8


def test_principal_components_are_orthonormal_sorted_and_sign_fixed():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3, 2, 1, 0.5, 0.1])
    mean, components, singular = principal_components(x, 4)
    assert torch.allclose(mean, x.mean(0))
    assert torch.allclose(components @ components.T, torch.eye(4, dtype=x.dtype), atol=1e-12)
    assert torch.all(singular[:-1] >= singular[1:])
    largest = components.gather(1, components.abs().argmax(1, keepdim=True))
    assert torch.all(largest > 0)
    # the same directions for negated data (SVD's sign is arbitrary, ours is not)
    assert torch.allclose(principal_components(-x, 4)[1], components, atol=1e-10)


@pytest.mark.parametrize("k", [1, 3])
def test_principal_components_capture_the_most_variance(k):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    mean, components, singular = principal_components(x, k)
    projected_var = ((x - mean) @ components.T).var(0, unbiased=True)
    assert torch.allclose(projected_var, singular[:k] ** 2 / (len(x) - 1))
    eigenvalues = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)
    assert torch.allclose(projected_var, eigenvalues[:k])
