"""Deterministic mode: two PPO runs of one seed give identical metrics, and the process is put back afterwards."""

import pytest
import torch

from engine.config import GenerationSettings, ModelSettings, PPOSettings, RunConfig, validate
from engine.determinism import available_cores, deterministic_run
from engine.models import load_policy
from engine.ppo import PPOTrainer

PROMPTS = ["Human: hi there", "Human: what is the weather like today?", "Human: tell me a story",
           "Human: how do I cook rice?"]


def _reward(prompts, responses):
    scores = [sum(c in "aeiou" for c in r) / max(1, len(r)) for r in responses]
    return scores, {"vowels": scores}


def _run(path, seed: int, enabled: bool = True, threads: int = 1):
    with deterministic_run(seed, enabled=enabled, threads=threads) as info:
        bundle = load_policy(ModelSettings(name_or_path=str(path), device="cpu"))
        trainer = PPOTrainer(bundle, _reward, PPOSettings(batch_size=4, mini_batch_size=2, num_generations=2,
                                                          learning_rate=1e-3, seed=seed),
                             GenerationSettings(max_new_tokens=6, min_length=2), max_prompt_tokens=32)
        history = []
        for step in range(3):
            m = trainer.step(PROMPTS[2 * (step % 2): 2 * (step % 2) + 2])
            history.append({k: v for k, v in m.items() if not k.startswith("time/")})
        weights = [p.detach().clone() for p in bundle.policy.parameters()]
    return history, weights, info


def test_two_runs_of_one_seed_are_identical(tiny_gpt2_dir):
    before_threads = torch.get_num_threads()
    a, wa, info = _run(tiny_gpt2_dir, 3)
    b, wb, _ = _run(tiny_gpt2_dir, 3)
    assert info == {"deterministic": True, "seed": 3, "threads": 1, "deterministic_kernels": False}
    assert a == b  # every metric of every step, exactly
    assert all(torch.equal(x, y) for x, y in zip(wa, wb, strict=True))
    c, _, _ = _run(tiny_gpt2_dir, 4)
    assert c != a  # the seed matters: the check above is not comparing constants
    # the process is put back: threads and the deterministic flag as before
    assert torch.get_num_threads() == before_threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_threads_zero_means_every_available_core_and_kernels_follow_the_device():
    with deterministic_run(0, threads=0) as info:
        assert info["threads"] == torch.get_num_threads() == available_cores()
        assert not torch.are_deterministic_algorithms_enabled()  # CPU: threads and seeds suffice
    with deterministic_run(0, threads=1, device="cuda") as info:  # the flag needs no GPU to be set
        assert torch.are_deterministic_algorithms_enabled() and info["deterministic_kernels"] is True
    assert not torch.are_deterministic_algorithms_enabled()  # restored
    with deterministic_run(0, enabled=False, device="cuda") as info:
        assert not torch.are_deterministic_algorithms_enabled() and info["deterministic"] is False


def test_available_cores_honours_omp_num_threads(monkeypatch):
    """Several workers on one machine get their share through RLAIF_LAB_THREADS (`engine worker --threads N`)."""
    monkeypatch.delenv("RLAIF_LAB_THREADS", raising=False)
    cores = available_cores()
    monkeypatch.setenv("RLAIF_LAB_THREADS", "1")
    assert available_cores() == 1
    with deterministic_run(0, threads=0) as info:
        assert info["threads"] == torch.get_num_threads() == 1
    with deterministic_run(0, threads=2) as info:  # a run's own threads setting wins
        assert info["threads"] == 2
    for ignored in ("999", "0", "two", ""):  # more than the cores, or not a count: every core
        monkeypatch.setenv("RLAIF_LAB_THREADS", ignored)
        assert available_cores() == cores, ignored


@pytest.mark.parametrize("bad", [-1, 1.5, "two"])
def test_threads_must_be_a_count(bad):
    cfg = RunConfig()
    cfg.model.threads = bad
    assert any(e.field == "model.threads" for e in validate(cfg))
    assert RunConfig().model.deterministic is True
