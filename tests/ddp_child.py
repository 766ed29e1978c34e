"""One rank of tests/test_ddp.py: joins the process group from the launcher's environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, as `accelerate launch` / torchrun set them), takes its shard of the case's rollout, runs
one PPO update through engine.ppo.PPOTrainer with DDP, and z-scores its shard of rewards with a zscore Ensemble.

    python tests/ddp_child.py CASE_DIR        reads CASE_DIR/case.pt, writes CASE_DIR/rank<R>.pt
"""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.config import GenerationSettings, ModelSettings, PPOSettings  # noqa: E402
from engine.distributed import group_from_env  # noqa: E402
from engine.models import load_policy  # noqa: E402
from engine.ppo import PPOTrainer, Rollout, shard_rollout  # noqa: E402
from engine.rewards.base import RewardResult  # noqa: E402
from engine.rewards.ensemble import Ensemble  # noqa: E402


class Length:
    """A reward backend: the response's length in characters (a z-score ensemble then has real work)."""

    name = "length"

    def score(self, prompts, responses):
        return RewardResult(scores=[float(len(r)) for r in responses])


def sgd(trainer, lr: float) -> None:
    """Plain SGD in place of Adam: Adam turns a gradient that is float noise (a key bias, which softmax ignores) into
    a step of about lr, so only a linear optimiser lets the weights be compared at 1e-5 (Adam is elementwise: the
    same gradients on every rank give the same step)."""
    trainer.optimizer = torch.optim.SGD([p for p in trainer.bundle.policy.parameters() if p.requires_grad], lr=lr)


def run_case(case: dict, group) -> dict:
    torch.manual_seed(0)
    bundle = load_policy(ModelSettings(name_or_path=case["model"], device="cpu", mixed_precision="none"))
    trainer = PPOTrainer(bundle, lambda p, r: ([0.0] * len(r), {}), PPOSettings(**case["ppo"]),
                         GenerationSettings(**case["gen"]), max_prompt_tokens=64,
                         share_prompt_states=case["share"], group=group)
    sgd(trainer, case["lr"])
    rollout = shard_rollout(Rollout(**case["rollout"]), group)
    metrics = trainer.update(rollout)
    ensemble = Ensemble([(Length(), 1.0)], normalize="zscore")
    ensemble.group = group
    normed = []
    for batch in case["reward_batches"]:  # two batches: the second is normalised with the first's statistics too
        normed.append(ensemble.score(group.shard(batch["prompts"]), group.shard(batch["responses"])).scores)
    stats = ensemble.stats["length"]
    return {"params": {n: p.detach().clone() for n, p in bundle.policy.named_parameters()},
            "metrics": metrics, "kl_coef": trainer.kl_ctl.value, "normed": normed,
            "reward_stats": (stats.count, stats.mean, stats.m2), "rows": len(rollout.prompts),
            "tokens": float(rollout.response_mask.sum())}


if __name__ == "__main__":
    torch.set_num_threads(1)
    where = Path(sys.argv[1])
    group = group_from_env()
    result = run_case(torch.load(where / "case.pt", weights_only=False), group)
    torch.save(result, where / f"rank{group.rank}.pt")
    group.barrier()
    torch.distributed.destroy_process_group()
