"""A two-mode action distribution: the flow head keeps both modes, the MSE head averages them."""

import torch

from world_modality.policy.heads import FlowHead, MSEHead


def _fit(head, steps=1500, batch=256, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    h = torch.zeros(batch, 1, 8)  # one observation: all variation in the target is action ambiguity
    mask = torch.ones(batch, 1, dtype=torch.bool)
    for _ in range(steps):
        # Half the demonstrations go left (-1), half go right (+1), from the same observation.
        a = torch.where(torch.rand(batch, 1, 1) < 0.5, -1.0, 1.0)
        loss = head.loss(h, a, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def test_flow_keeps_both_modes_where_mse_averages_them():
    mse = _fit(MSEHead(8, 1, 1, 1))
    flow = _fit(FlowHead(8, 1, 1, 1, steps=10, time_sampling="uniform", width=64))
    h = torch.zeros(2000, 1, 8)
    with torch.no_grad():
        m = mse.sample(h).flatten()
        f = flow.sample(h, generator=torch.Generator().manual_seed(1)).flatten()
    # MSE: every sample is the mean of the modes, an action no demonstration took.
    assert float(m.abs().max()) < 0.15
    # Flow: samples land on both modes in about equal shares and rarely in between.
    left, right = float((f < -0.5).float().mean()), float((f > 0.5).float().mean())
    assert 0.3 < left < 0.7 and 0.3 < right < 0.7, (left, right)
    assert float((f.abs() < 0.3).float().mean()) < 0.1
    near = torch.minimum((f - 1).abs(), (f + 1).abs())
    assert float(near.median()) < 0.15
