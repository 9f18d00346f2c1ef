"""graph_encoders/diffusion.py: the noise schedule, forward / reverse steps, time embedding, conditioned denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from graph_encoders.diffusion import (
    ConditionalDenoiser,
    ConditionAttention,
    NoiseSchedule,
    TimeEmbedding,
    reverse_process,
)


def test_schedule_is_linear_and_cumulative():
    schedule = NoiseSchedule(10, 0.001, 0.1)
    assert schedule.betas[0].item() == pytest.approx(0.001) and schedule.betas[-1].item() == pytest.approx(0.1)
    assert schedule.betas[1].item() == pytest.approx(0.001 + 0.099 / 9)
    expected = math.prod(1.0 - (0.001 + 0.099 * i / 9) for i in range(10))
    assert schedule.alpha_bars[-1].item() == pytest.approx(expected, rel=1e-5)
    assert schedule.alpha_bars[-1].item() == pytest.approx(0.5916, abs=1e-3)  # h_T keeps most of the signal
    assert schedule.state_dict() == {}  # derived from the config, never saved
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule(10, 0.2, 0.1)


def test_forward_step_and_its_inverse():
    schedule = NoiseSchedule(5, 0.01, 0.2)
    x0, noise = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    t = torch.tensor([[1, 2, 3, 5]]).expand(3, 4)
    noisy = schedule.q_sample(x0, t, noise)
    alpha_bar = schedule.alpha_bars[t - 1][..., None]
    torch.testing.assert_close(noisy, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise)
    torch.testing.assert_close(schedule.predict_start(noisy, t, noise), x0, rtol=0, atol=1e-5)
    assert schedule.q_sample(x0, 5, torch.zeros_like(x0)).sub(x0 * schedule.alpha_bars[4].sqrt()).abs().max() == 0
    with pytest.raises(ValueError, match="1..5"):
        schedule.q_sample(x0, torch.zeros(3, 4, dtype=torch.long), noise)


def test_reverse_step_with_the_true_noise_recovers_the_clean_feature_at_step_one():
    schedule = NoiseSchedule(10, 0.001, 0.1)
    x0, noise = torch.randn(2, 5), torch.randn(2, 5)
    x1 = schedule.q_sample(x0, 1, noise)
    torch.testing.assert_close(schedule.reverse_step(x1, 1, noise), x0, rtol=0, atol=1e-6)
    # t > 1: the DDPM mean, plus σ_t z only when noise is given
    x5 = schedule.q_sample(x0, 5, noise)
    mean = schedule.reverse_step(x5, 5, noise)
    alpha, alpha_bar = schedule.alphas[4], schedule.alpha_bars[4]
    torch.testing.assert_close(mean, (x5 - (1 - alpha) / (1 - alpha_bar).sqrt() * noise) / alpha.sqrt())
    z = torch.ones_like(x0)
    sigma = (schedule.betas[4] * (1 - schedule.alpha_bars[3]) / (1 - alpha_bar)).sqrt()
    torch.testing.assert_close(schedule.reverse_step(x5, 5, noise, z), mean + sigma)
    with pytest.raises(ValueError, match="1..10"):
        schedule.reverse_step(x5, 11, noise)


def test_time_embedding_tells_steps_apart():
    torch.manual_seed(0)
    embedding = TimeEmbedding(7)  # odd width is padded
    out = embedding(torch.tensor([[1, 2], [10, 1]]))
    assert out.shape == (2, 2, 7)
    torch.testing.assert_close(out[0, 0], out[1, 1])
    assert (out[0, 0] - out[0, 1]).abs().max() > 1e-3


def test_condition_attention_with_no_visible_condition_is_the_null_read_out():
    torch.manual_seed(0)
    attention = ConditionAttention(8, 2, 0.0).eval()
    queries = torch.randn(2, 3, 8)
    blind = torch.zeros(2, 3, 4, dtype=torch.bool)
    first = attention(queries, torch.randn(2, 4, 8), blind)
    second = attention(queries, torch.randn(2, 4, 8) * 10, blind)
    assert torch.isfinite(first).all()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    seeing = attention(queries, torch.randn(2, 4, 8), torch.ones(2, 3, 4, dtype=torch.bool))
    assert not torch.allclose(first, seeing)


def test_the_denoiser_removes_noise_from_a_conditioned_toy_signal():
    """Clean features are a fixed linear map of the condition; after training, the reverse chain brings
    the noised features to less than half their distance from the clean ones than the start, and ε̂ beats the
    trivial guess."""
    torch.manual_seed(0)
    d, schedule = 8, NoiseSchedule(10, 0.001, 0.1)
    mix = torch.randn(d, d) / math.sqrt(d)
    denoiser = ConditionalDenoiser(d, 2, 0.0, inner_size=32)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=5e-3)
    own = torch.eye(4, dtype=torch.bool).expand(64, 4, 4)  # each position is conditioned on its own c

    def sample(rows: int = 64):
        condition = torch.randn(rows, 4, d)
        return condition, condition @ mix

    for _ in range(400):
        condition, x0 = sample()
        t, noise = schedule.sample_steps((64, 4), "cpu"), torch.randn(64, 4, d)
        loss = (denoiser(schedule.q_sample(x0, t, noise), t, condition, own) - noise).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    denoiser.eval()
    with torch.no_grad():
        condition, x0 = sample()
        start = schedule.q_sample(x0, schedule.steps, torch.randn(64, 4, d, generator=torch.Generator().manual_seed(1)))

        def denoise(x, t):
            return denoiser(x, torch.full((64, 4), t, dtype=torch.long), condition, own)

        denoised = reverse_process(start, denoise, schedule)
        t, noise = schedule.sample_steps((64, 4), "cpu"), torch.randn(64, 4, d)
        noise_error = (denoiser(schedule.q_sample(x0, t, noise), t, condition, own) - noise).square().mean()
    before, after = (start - x0).square().mean(), (denoised - x0).square().mean()
    assert after < 0.5 * before, (before, after, noise_error)
    assert noise_error < 0.5, noise_error  # predicting ε̂ = 0 scores 1.0
