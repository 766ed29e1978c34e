"""The Policy playground page under AppTest (no server, no worker: $RLAIF_LAB_LOCAL_WORKER=0): what it offers, what
Generate queues (or refuses), and how it draws a request's progress, its failure and its result, which this test
writes into the store as the serving process would."""

from __future__ import annotations

from engine.config import RewardBackendSettings, RunConfig
from engine.store import Store, new_owner_id
from tests import test_pages_apptest as pages_apptest
from tests.test_pages_apptest import app, by_key, errors

db = pages_apptest.db  # the store fixture of the page tests ($RLAIF_LAB_DB, no local worker)


def add_played_run(store: Store, tmp_path, name: str = "played") -> str:
    """A completed run with a policy checkpoint on disk (its files are never loaded here) and two hold-out prompts."""
    cfg = RunConfig(name=name)
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity", name="judge")
    run_id = store.create_run(cfg.to_yaml(), name=name, total_steps=3)
    store.set_status(run_id, "running")
    policy = tmp_path / name / "policy"
    policy.mkdir(parents=True)
    (policy / "config.json").write_text("{}")
    store.add_checkpoint(run_id, 3, policy)
    prompts = [cfg.data.template.format(dialogue=f"Human: question {i}\n\nAssistant:") for i in range(2)]
    store.add_evaluations(run_id, "before", [{"idx": i, "prompt": p, "response": "r", "toxicity": 0.1}
                                             for i, p in enumerate(prompts)])
    store.set_status(run_id, "completed")
    return run_id


def generate(at):
    return next(b for b in at.button if b.label == "Generate")


def sample(text: str, reward: float, tox: float, kl: float = 0.0) -> dict:
    return {"response": text, "length": len(text.split()), "kl": kl, "rewards": {"profanity": reward},
            "toxicity": tox, "errors": {}}


def test_no_policy_run_says_what_to_do(db):
    db.create_run(RunConfig(method="reward_model").to_yaml(), name="rm", method="reward_model")
    at = app("policy_playground")
    assert at.title[0].value == "Policy playground"
    assert "No run has a saved policy yet" in at.info[0].value


def test_generate_queues_a_request_and_the_page_draws_its_result(db, tmp_path):
    run_id = add_played_run(db, tmp_path)
    at = app("policy_playground", run_id=run_id)
    assert by_key(at.selectbox, "pp-run").value == run_id
    assert by_key(at.selectbox, f"pp-step-{run_id}").value == 3

    generate(at).click().run()  # the typed prompt is empty
    assert errors(at) == ["prompt: type a prompt or pick a hold-out prompt"]
    assert db.generations() == []

    by_key(at.radio, "pp-source").set_value("A hold-out prompt").run()
    by_key(at.selectbox, f"pp-holdout-{run_id}").set_value(1).run()
    by_key(at.number_input, "pp-k").set_value(2)
    by_key(at.number_input, "pp-temperature").set_value(0.7)
    generate(at).click().run()
    assert not errors(at), errors(at)
    [g] = db.generations()
    assert g.prompt == RunConfig().data.template.format(dialogue="Human: question 1\n\nAssistant:")
    assert (g.status, g.checkpoint_step, g.settings["k"], g.settings["temperature"]) == ("queued", 3, 2, 0.7)
    assert "Waiting for a process: no idle worker serves this store" in " ".join(c.value for c in at.caption)

    # The serving process reports, then stores its result: the page draws each side in its own column.
    server = Store(db.url, owner=new_owner_id("pg"))
    try:
        assert server.claim_generation().id == g.id
        server.finish_generation(g.id, result={
            "base": [sample("plain base words", -0.11, 0.11), sample("more base", -0.12, 0.12)],
            "trained": [sample("trained answer", -0.01, 0.01, kl=2.5), sample("trained again", -0.02, 0.02, kl=3.5)],
            "backends": ["profanity"], "evaluator": "judge", "prompt_used": g.prompt, "checkpoint_step": 3})
    finally:
        server.close()
    at.run()
    assert not at.exception and not errors(at)
    assert "Done: 2 samples a side" in at.success[0].value
    values = [m.value for m in at.metric if m.label == "mean profanity"]
    assert values == ["-0.115", "-0.015"]  # base first, then trained
    assert [m.value for m in at.metric if m.label == "mean toxicity (judge)"] == ["0.115", "0.015"]
    assert [m.value for m in at.metric if m.label == "mean KL to base"] == ["3.000"]  # the trained side only
    texts = [t.value for t in at.text]
    assert texts.index("plain base words") < texts.index("more base") < texts.index("trained answer")
    captions = " ".join(c.value for c in at.caption)
    assert "profanity -0.110" in captions and "toxicity 0.020" in captions and "KL 3.50" in captions


def test_a_failed_request_shows_its_reason(db, tmp_path):
    run_id = add_played_run(db, tmp_path)
    at = app("policy_playground", run_id=run_id)
    gen_id = db.create_generation(run_id, 3, str(tmp_path / "played" / "policy"), "Hello", {"k": 1}, total=2)
    db.finish_generation(gen_id, error="FileNotFoundError: checkpoint /x is gone from disk (pruned or moved)")
    at.session_state["pp-gen"] = gen_id
    at.run()
    assert any("The generation failed." in e and "gone from disk" in e for e in errors(at)), errors(at)
