"""The pieces of PPO against hand-worked examples: rewards with KL penalty, GAE, clipped losses, KL control."""

import math

import pytest
import torch

from engine.ppo import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    compute_rewards,
    leave_one_out_baseline,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)


def test_kl_penalty_sign_and_magnitude():
    # Two tokens: the policy is more confident than the reference on the first (positive KL)
    # and less on the second (negative per-token estimate).
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2)
    rewards, kl = compute_rewards(torch.tensor([3.0]), logp, ref, mask, kl_coef=0.2)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0]]))
    # -0.2 * 0.5 = -0.1 on the first token; +0.2 on the second plus the score 3 on the last token.
    assert torch.allclose(rewards, torch.tensor([[-0.1, 3.2]]))


def test_score_lands_on_last_real_token_and_padding_gets_nothing():
    logp = torch.zeros(2, 4)
    ref = torch.zeros(2, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float)
    rewards, _ = compute_rewards(torch.tensor([1.0, 2.0]), logp, ref, mask, kl_coef=0.1)
    assert rewards.tolist() == [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]


def test_gae_hand_worked_example():
    # V = [1, 2, 3], r = [0, 0, 1], gamma 1, lambda 0.5:
    # t=2: delta = 1 + 0 - 3 = -2, A = -2
    # t=1: delta = 0 + 3 - 2 = 1,  A = 1 + 0.5 * -2 = 0
    # t=0: delta = 0 + 2 - 1 = 1,  A = 1 + 0.5 * 0 = 1;  returns = A + V = [2, 2, 1]
    values = torch.tensor([[1.0, 2.0, 3.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    adv, ret = compute_gae(values, rewards, torch.ones(1, 3), gamma=1.0, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[1.0, 0.0, -2.0]]))
    assert torch.allclose(ret, torch.tensor([[2.0, 2.0, 1.0]]))


def test_gae_with_discount_and_padding():
    # Second token is the last real one; the padded value 9 must be ignored.
    # gamma 0.9, lambda 1: t=1: delta = 2 - 1 = 1, A = 1; t=0: delta = 0 + 0.9*1 - 1 = -0.1, A = -0.1 + 0.9*1 = 0.8
    values = torch.tensor([[1.0, 1.0, 9.0]])
    rewards = torch.tensor([[0.0, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = compute_gae(values, rewards, mask, gamma=0.9, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.8, 1.0, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[1.8, 2.0, 0.0]]))


def test_gae_lambda_one_gamma_one_is_monte_carlo_return():
    torch.manual_seed(0)
    values = torch.randn(3, 5)
    rewards = torch.randn(3, 5)
    mask = torch.ones(3, 5)
    _, ret = compute_gae(values, rewards, mask, gamma=1.0, lam=1.0)
    mc = rewards.flip(1).cumsum(1).flip(1)  # sum of future rewards
    assert torch.allclose(ret, mc, atol=1e-5)


def test_policy_loss_clipping():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 1.5]]))  # ratio 1.5 on both tokens
    adv = torch.tensor([[1.0, -1.0]])
    loss, stats = policy_loss(new, old, adv, torch.ones(1, 2), cliprange=0.2)
    # positive advantage: max(-1.5, -1.2) = -1.2 (clipped); negative: max(1.5, 1.2) = 1.5 (unclipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["approxkl"].item() == pytest.approx(0.5 * math.log(1.5) ** 2)


def test_policy_loss_gradient_vanishes_when_clipped():
    old = torch.zeros(1, 1)
    new = torch.log(torch.tensor([[1.5]])).requires_grad_()
    loss, _ = policy_loss(new, old, torch.tensor([[1.0]]), torch.ones(1, 1), cliprange=0.2)
    loss.backward()
    assert new.grad.abs().item() == 0.0


def test_value_loss_clipping():
    old_v = torch.tensor([[0.0]])
    new_v = torch.tensor([[1.0]])  # moved by 1, clipped to 0.2
    returns = torch.tensor([[2.0]])
    loss, stats = value_loss(new_v, old_v, returns, torch.ones(1, 1), cliprange_value=0.2)
    # unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24: max = 3.24, times 0.5
    assert loss.item() == pytest.approx(0.5 * 3.24)
    assert stats["clipfrac"].item() == 1.0
    assert stats["error"].item() == pytest.approx(1.0)


def test_masked_statistics_ignore_padding():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert masked_mean(x, mask).item() == 2.0
    assert masked_var(x, mask).item() == pytest.approx(2.0)  # unbiased: ((1-2)^2 + (3-2)^2) / 1
    w = masked_whiten(x, mask)
    assert w[0, 2].item() == 0.0
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_adaptive_kl_controller_moves_toward_target():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=12.0, n_steps=16)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 16 / 10000))
    before = ctl.value
    ctl.update(current_kl=3.0, n_steps=16)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(before * (1 - 0.2 * 16 / 10000))
    ctl2 = AdaptiveKLController(0.2, target=6.0, horizon=100)
    ctl2.update(current_kl=6.6, n_steps=10)  # error 0.1 unclipped
    assert ctl2.value == pytest.approx(0.2 * (1 + 0.1 * 10 / 100))


def test_fixed_kl_controller_stays():
    ctl = FixedKLController(0.3)
    ctl.update(100.0, 16)
    assert ctl.value == 0.3


def test_min_length_eos_ban_keeps_the_kl_estimate_honest():
    # Policy and reference agree on every token but EOS (id 0), which the policy wants far more. With generate's
    # min_new_tokens = 3 the first three tokens can never be EOS, so on those positions the two SAMPLING
    # distributions are identical and the KL of any sampled token must be exactly 0. Scoring with the raw logits
    # (the old way) makes every forced token look less likely under the policy: a negative KL, i.e. a bonus.
    from engine.models import entropy_from_logits, logprobs_from_logits

    torch.manual_seed(0)
    ref_logits = torch.randn(2, 4, 7)
    pol_logits = ref_logits.clone()
    pol_logits[..., 0] += 5.0
    tokens = torch.tensor([[3, 1, 4, 2], [5, 6, 2, 0]])  # EOS (0) only at position 3, after the ban

    raw = logprobs_from_logits(pol_logits, tokens) - logprobs_from_logits(ref_logits, tokens)
    assert (raw[:, :3] < -1.0).all()  # the trap

    kl = (logprobs_from_logits(pol_logits, tokens, 1.0, 3, 0)
          - logprobs_from_logits(ref_logits, tokens, 1.0, 3, 0))
    assert torch.allclose(kl[:, :3], torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(kl[:, 3:], raw[:, 3:])  # after the ban nothing changes
    # A banned EOS that only sits under the padding mask stays finite (no NaN through mask * logp).
    lp = logprobs_from_logits(pol_logits, torch.zeros(2, 4, dtype=torch.long), 1.0, 3, 0)
    assert torch.isfinite(lp).all() and (lp[:, :3] < -1e30).all()
    assert torch.isfinite(entropy_from_logits(pol_logits, 1.0, 3, 0)).all()
    # Temperature divides the logits before the ban, as generate does.
    assert torch.allclose(logprobs_from_logits(pol_logits, tokens, 2.0, 3, 0),
                          logprobs_from_logits(pol_logits / 2.0, tokens, 1.0, 3, 0))


def test_leave_one_out_baseline_by_hand():
    # two prompts, three responses each: every score minus the mean of its two siblings
    scores = torch.tensor([1.0, 2.0, 6.0, -1.0, -1.0, 5.0])
    centred = leave_one_out_baseline(scores, 3)
    assert torch.allclose(centred, torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5, -1 - 2.0, -1 - 2.0, 5 + 1.0]))
    # a prompt whose responses all score the same gives no signal, whatever its level
    assert torch.equal(leave_one_out_baseline(torch.tensor([7.0, 7.0, -3.0, -3.0]), 2), torch.zeros(4))
    assert torch.equal(leave_one_out_baseline(scores, 1), scores)  # the seed's PPO: unchanged
    with pytest.raises(ValueError, match="groups of 4"):
        leave_one_out_baseline(scores, 4)


def test_returns_come_from_the_raw_advantages_and_only_the_advantages_are_whitened():
    from engine.ppo import advantages_and_returns

    # The GAE example above (V = [1, 2, 3], r = [0, 0, 1], gamma 1, lambda 0.5) plus a padded 4th token holding junk.
    values = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = advantages_and_returns(values, rewards, mask, gamma=1.0, lam=0.5)
    assert torch.allclose(ret, torch.tensor([[2.0, 2.0, 1.0, 0.0]]))  # A + V with the raw A = [1, 0, -2]
    # raw A = [1, 0, -2]: mean -1/3, unbiased variance ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3
    std = math.sqrt(7 / 3)
    assert torch.allclose(adv, torch.tensor([[(4 / 3) / std, (1 / 3) / std, (-5 / 3) / std, 0.0]]), atol=1e-6)


def test_whiten_rewards_keeps_their_mean_as_trl_did():
    from engine.ppo import advantages_and_returns

    # r = [1, 3] (+ padding): mean 2, unbiased var 2 -> (r - 2) / sqrt(2) + 2 = [2 - 1/sqrt2, 2 + 1/sqrt2].
    # With V = 0, gamma = lambda = 1 the returns are the reward-to-go: [4, 2 + 1/sqrt2].
    rewards = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    _, ret = advantages_and_returns(torch.zeros(1, 3), rewards, mask, 1.0, 1.0, whiten_rewards=True)
    assert torch.allclose(ret, torch.tensor([[4.0, 2 + 1 / math.sqrt(2), 0.0]]), atol=1e-5)
    _, plain = advantages_and_returns(torch.zeros(1, 3), rewards, mask, 1.0, 1.0)
    assert torch.allclose(plain, torch.tensor([[4.0, 3.0, 0.0]]))


def test_policy_loss_ignores_padded_tokens():
    # Real tokens: ratio 1.5 with A = +1 (clipped to 1.2) and ratio 0.5 with A = +2 (unclipped: -1.0).
    # The padded third token holds a huge ratio and advantage that must change nothing.
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 40.0]]))
    adv = torch.tensor([[1.0, 2.0, -30.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped); token 2: max(-1.0, -2 * 0.8 = -1.6) = -1.0 (unclipped)
    assert loss.item() == pytest.approx((-1.2 - 1.0) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["ratio"].item() == pytest.approx(1.0)
    assert stats["approxkl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)
    new = new.clone().requires_grad_()
    policy_loss(new, old, adv, mask, cliprange=0.2)[0].backward()
    assert new.grad[0, 2].item() == 0.0 and new.grad[0, 0].item() == 0.0  # padding and the clipped token
    assert new.grad[0, 1].item() == pytest.approx(-2 * 0.5 / 2)  # d(-A * ratio)/dlogp = -A * ratio, over 2 tokens


def test_value_loss_ignores_padded_tokens():
    old_v = torch.tensor([[0.0, 0.0, 0.0]])
    new_v = torch.tensor([[1.0, 0.1, 99.0]])
    returns = torch.tensor([[2.0, 0.0, -99.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = value_loss(new_v, old_v, returns, mask, cliprange_value=0.2)
    # token 1: max((1-2)^2, (0.2-2)^2) = 3.24 (clipped); token 2: max(0.01, 0.01) = 0.01
    assert loss.item() == pytest.approx(0.5 * (3.24 + 0.01) / 2)
    assert stats["error"].item() == pytest.approx((1.0 + 0.01) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["vpred"].item() == pytest.approx(0.55)


def test_entropy_of_the_sampling_distribution_by_hand():
    from engine.models import entropy_from_logits

    # vocabulary of 3 (EOS = 0), temperature 2, EOS banned at the first position only
    logits = torch.tensor([[[2.0, 0.0, math.log(9.0) * 2], [0.0, 0.0, 0.0]]])

    def h(zs):
        ps = [math.exp(z) for z in zs]
        total = sum(ps)
        return -sum(p / total * math.log(p / total) for p in ps)

    want_0 = h([0.0, math.log(9.0)])  # EOS out: p = (0.1, 0.9) over tokens 1, 2
    want_1 = math.log(3.0)  # uniform over three
    got = entropy_from_logits(logits, temperature=2.0, min_new_tokens=1, eos_token_id=0)
    assert got[0, 0].item() == pytest.approx(want_0, abs=1e-6)
    assert got[0, 1].item() == pytest.approx(want_1, abs=1e-6)
    assert entropy_from_logits(logits)[0, 0].item() == pytest.approx(h([2.0, 0.0, math.log(9.0) * 2]), abs=1e-6)
