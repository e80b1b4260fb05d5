import numpy as np
import pytest
import torch

from world_modality.config import build_config
from world_modality.policy.factory import build_policy, build_preprocessor
from world_modality.policy.model import PolicyShapes
from world_modality.policy.tokenizer import build_tokenizer

TASKS = ["move the block to the top left corner", "move the block to the bottom right corner"]
LATENT = 16


def make_policy(preset="E2", **overrides):
    cfg = build_config({"image_size": 32, "world_image_size": 32, **overrides}, preset=preset)
    torch.manual_seed(0)
    policy = build_policy(cfg, PolicyShapes(8, 7, LATENT), tokenizer=build_tokenizer(TASKS))
    rng = np.random.default_rng(0)
    stats = dict(state_mean=np.zeros(8), state_std=np.ones(8), action_mean=np.zeros(7), action_std=np.ones(7))
    if policy.needs_world:
        stats.update(latent_mean=rng.normal(size=LATENT), latent_std=np.ones(LATENT), delta_std=np.full(LATENT, 0.5))
    policy.set_stats(**stats)
    if policy.use_memory:
        with torch.no_grad():
            policy.xattn.gate.fill_(0.8)  # an open gate, as after training, so the memory matters
            for p in policy.prophet.parameters():
                p.normal_(0, 0.1)
    return policy.eval()


def make_batch(policy, n=4, seed=0, tasks=TASKS):
    """A random batch through the policy's own preprocessor, with latents and actions for the losses."""
    rng = np.random.default_rng(seed)
    size = policy.cfg.data.image_size
    obs = [
        {k: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for k in policy.cfg.data.image_keys} for _ in range(n)
    ]
    for i, o in enumerate(obs):
        o["observation.state"] = rng.normal(size=8).astype(np.float32)
        o["task"] = tasks[i % len(tasks)]
    batch = build_preprocessor(policy.cfg, policy)(obs)
    return batch.replace(
        z_t=torch.as_tensor(rng.normal(size=(n, LATENT)), dtype=torch.float32),
        z_future=torch.as_tensor(rng.normal(size=(n, LATENT)), dtype=torch.float32),
        actions=torch.as_tensor(rng.normal(size=(n, 8, 7)), dtype=torch.float32),
        action_mask=torch.ones(n, 8, dtype=torch.bool),
    )


def test_leakage_guard_true_future_only_reaches_actions_in_oracle_mode():
    policy = make_policy("E2")
    batch = make_batch(policy)
    other = batch.replace(z_future=batch.z_future + 5.0 * torch.randn_like(batch.z_future))
    assert torch.equal(policy.predict_actions(batch), policy.predict_actions(other))
    assert not torch.allclose(policy.predict_actions(batch, "oracle"), policy.predict_actions(other, "oracle"))


def test_predicted_memory_depends_on_present_latent():
    policy = make_policy("E2")
    batch = make_batch(policy)
    moved = batch.replace(z_t=batch.z_t + 1.0)
    assert not torch.allclose(policy.predict_actions(batch), policy.predict_actions(moved))


@pytest.mark.parametrize("mode", ["zero", "random", "shuffle", "oracle"])
def test_memory_ablations_change_the_memory(mode):
    policy = make_policy("E2")
    batch = make_batch(policy)
    batch = batch.replace(z_other=torch.randn(batch.z_t.shape, generator=torch.Generator().manual_seed(1)))
    gen = torch.Generator().manual_seed(0)
    assert not torch.allclose(policy.predict_actions(batch), policy.predict_actions(batch, mode, generator=gen))


def test_shuffle_reads_the_given_other_memory_and_never_rolls_the_batch():
    """The batch's futures rolled by one are a neighbour's, almost the sample's own: shuffle without
    a caller-chosen `z_other` is an error, not that silent leak."""
    policy = make_policy("E2")
    batch = make_batch(policy)
    with pytest.raises(ValueError, match="'shuffle' needs `z_other`"):
        policy.predict_actions(batch, "shuffle")
    other = torch.randn(batch.z_t.shape, generator=torch.Generator().manual_seed(1))
    ctx = policy.context(batch.replace(z_other=other), "shuffle")
    assert torch.allclose(ctx["act_h"], policy.context(batch.replace(z_future=other), "oracle")["act_h"])
    with pytest.raises(ValueError, match="Batch.z_other has shape"):
        batch.replace(z_other=other[:1])  # a row count unlike the batch's: refused before the model sees it
    with pytest.raises(ValueError, match="one latent per sample"):
        policy.predict_actions(batch.replace(z_other=other[:, :-1]), "shuffle")


def test_e0_has_no_world_branch_and_ignores_latents():
    policy = make_policy("E0")
    assert not hasattr(policy, "xattn") and not hasattr(policy, "prophet") and policy.gate() is None
    batch = make_batch(policy)
    batch = batch.replace(z_t=None, z_future=None)
    out = policy.losses(batch)
    assert set(out) == {"action_loss", "loss"}


def test_closed_gate_makes_e2_act_like_its_trunk():
    policy = make_policy("E2")
    with torch.no_grad():
        policy.xattn.gate.zero_()
    batch = make_batch(policy)
    a = policy.predict_actions(batch, "predicted")
    b = policy.predict_actions(batch, "random", generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, b)


def test_losses_backpropagate_into_gate_prophet_and_act_queries():
    policy = make_policy("E2").train()
    out = policy.losses(make_batch(policy))
    out["loss"].backward()
    for name in ("xattn.gate", "act_queries", "prophet.mlp.0.weight", "memory_proj.weight"):
        grad = dict(policy.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    assert float(out["world_loss"].detach()) > 0


def test_chain_of_causation_text_is_invisible_to_the_action_path():
    policy = make_policy("E4", coc_jsonl="unused.jsonl")
    batch = make_batch(policy)
    pre = build_preprocessor(policy.cfg, policy)
    obs = [{"task": t} for t in TASKS * 2]
    with_text = batch.replace(
        **pre.tokens([o["task"] for o in obs], ["the block is left; move right", None, "grasp it", "done"])
    )
    a = policy.predict_actions(batch)
    b = policy.predict_actions(with_text)
    assert torch.allclose(a, b, atol=1e-5)
    loss = policy.losses(with_text)
    assert float(loss["text_loss"].detach()) > 0
    assert with_text.text_mask[1].sum() == 0  # a frame without annotation adds nothing to the loss


def test_present_memory_is_exactly_z_t():
    """`present`: the action path attends to the sample's own z_t (history, no foresight), bit for bit; nothing of the
    Prophet or of the true future reaches it."""
    policy = make_policy("E2")
    batch = make_batch(policy)
    assert policy.memory_latent("present", torch.zeros_like(batch.z_t), batch) is batch.z_t
    as_oracle = policy.context(batch.replace(z_future=batch.z_t.clone()), "oracle")["act_h"]
    assert torch.equal(policy.context(batch, "present")["act_h"], as_oracle)
    assert not torch.allclose(policy.predict_actions(batch, "present"), policy.predict_actions(batch))
    other = batch.replace(z_future=batch.z_future + 5.0)
    assert torch.equal(policy.predict_actions(batch, "present"), policy.predict_actions(other, "present"))
    with torch.no_grad():
        for p in policy.prophet.mlp.parameters():
            p.add_(1.0)
    assert torch.equal(policy.context(batch, "present")["act_h"], as_oracle)


def test_e2_present_trains_on_present_memory_without_a_world_gradient():
    """E2-Present: its configured mode is what training and a call without a mode use; with lambda_world 0 the
    Prophet gets no gradient (it stays at its copy-last init), the memory path does."""
    policy = make_policy("E2-Present")
    assert policy.cfg.policy.memory_mode == "present" and policy.cfg.world.lambda_world == 0
    batch = make_batch(policy)
    assert torch.equal(policy.predict_actions(batch), policy.predict_actions(batch, "present"))
    assert not torch.allclose(policy.predict_actions(batch), policy.predict_actions(batch, "predicted"))
    policy.train()
    out = policy.losses(batch)
    out["loss"].backward()
    assert torch.equal(out["loss"], out["action_loss"])
    named = dict(policy.named_parameters())
    assert all(p.grad is None or not p.grad.any() for n, p in named.items() if n.startswith("prophet."))
    for name in ("xattn.gate", "memory_proj.weight", "act_queries"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name


def make_token_policy(n_tokens, token_dim=LATENT, **overrides):
    cfg = build_config({"image_size": 32, "world_image_size": 32, "world_tokens": n_tokens, **overrides}, preset="E2")
    torch.manual_seed(0)
    latent = n_tokens * token_dim
    policy = build_policy(cfg, PolicyShapes(8, 7, latent), tokenizer=build_tokenizer(TASKS))
    rng = np.random.default_rng(0)
    policy.set_stats(
        np.zeros(8),
        np.ones(8),
        np.zeros(7),
        np.ones(7),
        latent_mean=rng.normal(size=latent),
        latent_std=np.ones(latent),
        delta_std=np.full(latent, 0.5),
    )
    with torch.no_grad():
        policy.xattn.gate.fill_(0.8)
    return policy.eval()


def test_world_tokens_make_n_times_n_memory_tokens_and_predict_every_token():
    """N = 4 world tokens: the Prophet predicts the 4·D flattened latent, the cross-attention attends over
    4 × n_memory_tokens memory tokens, each world token projected with the same weights."""
    n, mem = 4, 3
    policy = make_token_policy(n, n_memory_tokens=mem)
    hidden = policy.backbone.hidden_size
    assert policy.memory_proj.weight.shape == (mem * hidden, LATENT) and policy.memory_pos.shape == (n * mem, hidden)
    assert policy.prophet.latent_dim == n * LATENT
    rng = np.random.default_rng(1)
    batch = make_batch(make_policy("E2"))  # the same observations; latents of 4 tokens below
    batch = batch.replace(
        z_t=torch.as_tensor(rng.normal(size=(4, n * LATENT)), dtype=torch.float32),
        z_future=torch.as_tensor(rng.normal(size=(4, n * LATENT)), dtype=torch.float32),
    )
    seen = {}
    policy.xattn.register_forward_hook(lambda module, args, out: seen.update(memory=args[1]))
    ctx = policy.context(batch)
    assert ctx["z_pred"].shape == (4, n * LATENT) and seen["memory"].shape == (4, n * mem, hidden)
    # Token k's memory rows come from token k's values alone, through the shared projection.
    z = policy.prophet.normalize(ctx["z_pred"]).view(4, n, LATENT)
    expected = policy.memory_proj(z).view(4, n * mem, hidden) + policy.memory_pos
    assert torch.allclose(seen["memory"], expected, atol=1e-6)
    assert policy.predict_actions(batch).shape == (4, 8, 7)
    with torch.no_grad():
        out = policy.losses(batch)
        assert torch.isfinite(out["loss"]) and float(out["world_loss"]) > 0
        # The world loss covers every token: a change of the last token's future changes it.
        moved = batch.z_future.clone()
        moved[:, -LATENT:] += 1.0
        assert not torch.equal(policy.losses(batch.replace(z_future=moved))["world_loss"], out["world_loss"])


def test_one_world_token_builds_and_computes_what_it_did_before_the_option():
    """N = 1: the same modules and initial values as the default config, and the memory computed as it was before
    world_tokens existed (one (B, D) projection viewed as n_memory_tokens tokens)."""
    a, b = make_policy("E2"), make_policy("E2", world_tokens=1)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.memory_pos.shape[0] == a.cfg.policy.n_memory_tokens
    batch = make_batch(a)
    seen = {}
    a.xattn.register_forward_hook(lambda module, args, out: seen.update(memory=args[1]))
    ctx = a.context(batch)
    z_norm = a.prophet.normalize(ctx["z_pred"])
    before = a.memory_proj(z_norm).view(z_norm.shape[0], -1, a.backbone.hidden_size) + a.memory_pos
    assert torch.equal(seen["memory"], before)


def test_latent_dim_that_is_not_n_tokens_is_refused():
    cfg = build_config({"image_size": 32, "world_image_size": 32, "world_tokens": 4}, preset="E2")
    with pytest.raises(ValueError, match="not 4 world tokens of equal width"):
        build_policy(cfg, PolicyShapes(8, 7, 4 * LATENT + 2), tokenizer=build_tokenizer(TASKS))
