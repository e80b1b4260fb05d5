"""Tests for the Prophet: copy-last at init, learning linear dynamics, losses and checkpointed stats."""

import pytest
import torch

from world_modality.world.prophet import Prophet, compute_delta_std, world_loss, world_mse

D = 8


def _linear_dynamics(n=512, seed=0, cond_dim=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(D, generator=g) * 3.0
    scale = torch.rand(D, generator=g) * 2.0 + 0.5
    z_t = mean + scale * torch.randn(n, D, generator=g)
    a = 0.3 * torch.randn(D, D, generator=g)
    z_future = z_t + z_t @ a.T
    cond = torch.randn(n, cond_dim, generator=g) if cond_dim else None
    if cond_dim:
        z_future = z_future + cond @ torch.randn(cond_dim, D, generator=g)
    return z_t, z_future, cond


def _fit(prophet, z_t, z_future, cond=None, steps=300, lr=3e-3):
    prophet.set_stats(z_t.mean(0), z_t.std(0), compute_delta_std(z_t, z_future))
    opt = torch.optim.Adam(prophet.parameters(), lr=lr)
    torch.manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(z_t), (64,))
        c = None if cond is None else cond[idx]
        loss = world_loss(prophet(z_t[idx], c), z_t[idx], z_future[idx], prophet)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return prophet


def test_init_equals_copy_last_in_delta_mode():
    z_t, z_future, _ = _linear_dynamics()
    p = Prophet(D, hidden_dim=32)
    p.set_stats(z_t.mean(0), z_t.std(0), compute_delta_std(z_t, z_future))
    out = p(z_t)
    assert torch.equal(out, z_t)
    std = p.latent_std
    assert torch.equal(world_mse(out, z_future, std), world_mse(z_t, z_future, std))
    assert world_mse(z_t, z_future, std) > 0


def test_delta_mode_beats_copy_last():
    z_t, z_future, _ = _linear_dynamics()
    # Held-out rows: the gain must generalise, not memorise.
    p = _fit(Prophet(D, hidden_dim=64), z_t[:384], z_future[:384])
    std = p.latent_std
    with torch.no_grad():
        trained = world_mse(p(z_t[384:]), z_future[384:], std)
    baseline = world_mse(z_t[384:], z_future[384:], std)
    assert trained < 0.2 * baseline, (trained, baseline)


def test_absolute_mode_trains():
    z_t, z_future, _ = _linear_dynamics()
    p = Prophet(D, hidden_dim=64, delta_prediction=False)
    p.set_stats(z_t.mean(0), z_t.std(0), compute_delta_std(z_t, z_future))
    with torch.no_grad():
        before = world_mse(p(z_t), z_future, p.latent_std)
    _fit(p, z_t, z_future, steps=400)
    with torch.no_grad():
        after = world_mse(p(z_t), z_future, p.latent_std)
    assert after < 0.5 * before, (after, before)


def test_conditioning_is_used():
    z_t, z_future, cond = _linear_dynamics(cond_dim=3)
    p = _fit(Prophet(D, cond_dim=3, hidden_dim=64), z_t, z_future, cond=cond, steps=400)
    with torch.no_grad():
        with_cond = world_mse(p(z_t, cond), z_future, p.latent_std)
        without = world_mse(p(z_t, torch.zeros_like(cond)), z_future, p.latent_std)
    assert with_cond < without
    with pytest.raises(ValueError, match="cond"):
        p(z_t)


def test_world_loss_units():
    z_t, z_future, _ = _linear_dynamics(n=64)
    p = Prophet(D, hidden_dim=16)
    dstd = compute_delta_std(z_t, z_future)
    p.set_stats(z_t.mean(0), z_t.std(0), dstd)
    # Copy-last in delta units is E[(δ/σ_δ)^2] = 1 + (mean_δ/σ_δ)^2 per dim (σ_δ is the population std).
    loss = world_loss(z_t, z_t, z_future, p)
    mean_delta = (z_future - z_t).mean(0)
    assert torch.allclose(loss, torch.mean(1 + (mean_delta / dstd) ** 2), rtol=1e-4)
    pa = Prophet(D, hidden_dim=16, delta_prediction=False)
    pa.set_stats(z_t.mean(0), z_t.std(0), dstd)
    assert torch.allclose(world_loss(z_future, z_t, z_future, pa), torch.tensor(0.0))


def test_stats_travel_in_state_dict():
    z_t, z_future, _ = _linear_dynamics(n=64)
    p = Prophet(D, hidden_dim=16)
    p.set_stats(z_t.mean(0), z_t.std(0), compute_delta_std(z_t, z_future))
    sd = p.state_dict()
    for name in ("latent_mean", "latent_std", "delta_std"):
        assert name in sd
    q = Prophet(D, hidden_dim=16)
    q.load_state_dict(sd, strict=True)
    assert torch.equal(q.delta_std, p.delta_std) and torch.equal(q.latent_mean, p.latent_mean)
    with pytest.raises(ValueError, match="latent_dim"):
        p.set_stats(torch.zeros(D + 1), torch.ones(D), torch.ones(D))
    p.set_stats(torch.zeros(D), torch.zeros(D), torch.zeros(D))
    assert (p.latent_std > 0).all() and (p.delta_std > 0).all()


def test_flattened_world_tokens_are_all_predicted_and_all_in_the_world_loss():
    """World tokens (`world_tokens` N): the Prophet sees and predicts the N tokens concatenated, one MLP; every
    token beats its own copy-last, and the world loss counts every token."""
    n_tok = 4
    parts = [_linear_dynamics(seed=s) for s in range(n_tok)]  # each token its own dynamics
    z_t = torch.cat([p[0] for p in parts], dim=1)
    z_future = torch.cat([p[1] for p in parts], dim=1)
    p = _fit(Prophet(n_tok * D, hidden_dim=128), z_t[:384], z_future[:384], steps=400)
    with torch.no_grad():
        pred = p(z_t[384:])
    assert pred.shape == (128, n_tok * D)
    for k in range(n_tok):
        cols = slice(k * D, (k + 1) * D)
        std = p.latent_std[cols]
        trained = world_mse(pred[:, cols], z_future[384:, cols], std)
        assert trained < 0.5 * world_mse(z_t[384:, cols], z_future[384:, cols], std), k
    with torch.no_grad():
        base = world_loss(pred, z_t[384:], z_future[384:], p)
        for k in range(n_tok):
            moved = z_future[384:].clone()
            moved[:, k * D : (k + 1) * D] += 1.0
            assert world_loss(pred, z_t[384:], moved, p) > base, k
