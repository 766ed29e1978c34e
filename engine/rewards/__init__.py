"""Reward backends: one interface (`base.RewardBackend`), built from config by `build_backend`.

Kinds: `profanity` (alt-profanity-check, offline), `jigsaw` (Jigsaw BiLSTM ported to PyTorch, offline),
`hf_classifier` (any Hugging Face sequence classifier, label picked by name), `overlap` (share of the
response's content words found in the prompt: stays on topic), `topic` (the response's PMI with the prompt under a
causal LM: a denser topic floor), `bedrock_judge` and
`openai_judge` (LLM judges). A run's reward is always an `Ensemble` of (backend, weight) pairs — a
single backend is a one-member ensemble — so every backend's raw score is recorded the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.rewards.base import RewardBackend, RewardResult, ToxicityScorer, texts_to_score

if TYPE_CHECKING:
    from engine.config import RewardBackendSettings, RewardSettings

__all__ = ["RewardBackend", "RewardResult", "ToxicityScorer", "texts_to_score", "build_backend", "build_reward"]


def build_backend(settings: "RewardBackendSettings", device: str = "cpu") -> Any:
    """Construct one backend from its settings (imports only the module that kind needs)."""
    kwargs = dict(settings.options)
    kwargs.setdefault("name", settings.display_name)
    if settings.kind in ("profanity", "jigsaw", "hf_classifier"):
        kwargs.setdefault("score_on", settings.score_on)
    if settings.kind == "profanity":
        from engine.rewards.profanity import ProfanityBackend

        return ProfanityBackend(**kwargs)
    if settings.kind == "jigsaw":
        from engine.rewards.jigsaw import JigsawBackend

        kwargs.setdefault("device", device)
        return JigsawBackend(**kwargs)
    if settings.kind == "hf_classifier":
        from engine.rewards.hf_classifier import HFClassifierBackend

        kwargs.setdefault("device", device)
        return HFClassifierBackend(**kwargs)
    if settings.kind == "overlap":
        from engine.rewards.overlap import OverlapBackend

        return OverlapBackend(**kwargs)
    if settings.kind == "topic":
        from engine.rewards.topic import TopicBackend

        kwargs.setdefault("device", device)
        return TopicBackend(**kwargs)
    if settings.kind == "bedrock_judge":
        from engine.rewards.bedrock_judge import BedrockJudge

        return BedrockJudge(**kwargs)
    if settings.kind == "openai_judge":
        from engine.rewards.openai_judge import OpenAIJudge

        return OpenAIJudge(**kwargs)
    raise ValueError(f"unknown reward kind {settings.kind!r}")


def build_reward(settings: "RewardSettings", device: str = "cpu") -> Any:
    """The run's reward: an Ensemble of every configured backend with its weight."""
    from engine.rewards.ensemble import Ensemble

    members = [(build_backend(b, device), b.weight) for b in settings.backends]
    return Ensemble(members, normalize=settings.normalize)
