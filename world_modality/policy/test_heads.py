import torch

from world_modality.policy.heads import FlowHead, MSEHead
from world_modality.policy.xattn import GatedCrossAttention


def test_gated_cross_attention_starts_as_identity():
    x = GatedCrossAttention(16)
    h, mem = torch.randn(2, 3, 16), torch.randn(2, 4, 16)
    assert torch.equal(x(h, mem), h)
    with torch.no_grad():
        x.gate.fill_(1.0)
    assert not torch.allclose(x(h, mem), h)


def test_masked_steps_do_not_count():
    head = MSEHead(8, 2, 4, 3)
    h = torch.randn(5, 2, 8)
    target = head.sample(h).detach()
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[:, 2:] = False
    target[:, 2:] += 100.0  # padded steps past the episode end: must not affect the loss
    assert float(head.loss(h, target, mask).detach()) < 1e-10


def test_flow_head_sampling_is_seeded_and_shaped():
    head = FlowHead(8, 2, 4, 3, steps=5, time_sampling="uniform")
    h = torch.randn(6, 2, 8)
    a = head.sample(h, generator=torch.Generator().manual_seed(0))
    b = head.sample(h, generator=torch.Generator().manual_seed(0))
    assert a.shape == (6, 4, 3) and torch.equal(a, b)
    t = FlowHead(8, 2, 4, 3, time_sampling="beta").sample_time(10000, "cpu")
    assert 0 <= float(t.min()) and float(t.max()) <= 1 and float(t.mean()) < 0.5  # pi0's schedule favours noisy times
