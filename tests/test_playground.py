"""The policy playground (engine.playground): requests in the store on both backends, bad input refused before
anything is stored, and requests served by REAL processes (a worker started by the Lab, or the Lab's playground
process while the only worker is busy) for a real tiny PPO run, with the samples reproduced here from the base model
and from the saved trained policy, so a side generated with the wrong weights fails, and the scores recomputed by the
backends themselves."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from engine.api import Lab
from engine.config import ConfigError, GenerationSettings, ModelSettings, RewardBackendSettings, RunConfig
from engine.playground import PlaygroundSettings, enqueue, holdout_prompts, policy_checkpoints
from engine.store import Store, new_owner_id
from tests.waiting import wait_for

# ---- the store's requests, on SQLite and PostgreSQL ---------------------------------------------------------


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    yield s
    s.close()


def test_requests_are_claimed_once_report_progress_and_end_with_a_result(store_url, store):
    run_id = store.create_run("a: 1", name="r")
    first = store.create_generation(run_id, 2, "/ckpt", "hello", {"k": 2}, total=4)
    second = store.create_generation(run_id, 2, "/ckpt", "again", {"k": 1}, total=2)
    other = Store(store_url, owner=new_owner_id("w"))
    try:
        got = [store.claim_generation(), other.claim_generation(), store.claim_generation()]
        assert [g.id if g else None for g in got] == [first, second, None]  # oldest first, each once
        assert (got[0].status, got[0].owner, got[0].prompt, got[0].settings) == ("loading", store.owner, "hello",
                                                                                  {"k": 2})
        assert store.note_generation(first, "generating", 3, "generating 3/4")
        assert not other.note_generation(first, "scoring")  # not the other's to report
        g = store.get_generation(first)
        assert (g.status, g.done, g.total, g.message) == ("generating", 3, 4, "generating 3/4")
        assert not other.finish_generation(first, result={"x": 1})
        assert store.finish_generation(first, result={"base": [{"response": "hi\x00"}]})
        g = store.get_generation(first)
        assert g.status == "done" and g.finished and g.result["base"][0]["response"] in ("hi\x00", "hi\ufffd")
        assert not store.note_generation(first, "scoring")  # finished: no more progress
        assert other.finish_generation(second, error="Boom: it broke")
        assert store.get_generation(second).error == "Boom: it broke"
        assert [g.id for g in store.generations(run_id)] == [second, first]
        assert [g.id for g in store.generations(status="done")] == [first]
        with pytest.raises(ValueError, match="status must be one of"):
            store.note_generation(first, "done")
        with pytest.raises(KeyError):
            store.create_generation("r-nope", 1, "/x", "p", {}, total=2)
        store.delete_run(run_id)  # its requests go with it
        assert store.generations() == []
    finally:
        other.close()


def test_a_request_whose_server_stopped_beating_is_failed_by_any_reader(store_url):
    with Store(store_url, lease_s=5) as reader, Store(store_url, owner=new_owner_id("pg")) as server:
        run_id = reader.create_run("a: 1")
        gen_id = reader.create_generation(run_id, 1, "/ckpt", "p", {}, total=2)
        assert server.claim_generation().id == gen_id
        assert reader.expire_generations() == []  # its heartbeat is fresh
        assert wait_for(lambda: reader.expire_generations() == [gen_id], timeout=60, every=0.5)
        g = reader.get_generation(gen_id)
        assert g.status == "failed" and g.error.startswith(f"the process serving it stopped: {server.owner}")
        assert not server.finish_generation(gen_id, result={})  # too late: the failure stands


# ---- bad input, refused before anything is stored -------------------------------------------------------------


@pytest.fixture
def played(store, tmp_path):
    """A completed PPO run with a (fake) PPO checkpoint on disk, a reward-model run and a run without checkpoints."""
    ckpt = tmp_path / "step-000003"
    ckpt.mkdir()
    (ckpt / "policy.pt").write_bytes(b"")
    run_id = store.create_run(RunConfig().to_yaml(), name="ppo", total_steps=3)
    store.add_checkpoint(run_id, 3, ckpt)
    rm = store.create_run(RunConfig(method="reward_model").to_yaml(), name="rm", method="reward_model")
    store.add_checkpoint(rm, 3, ckpt)
    bare = store.create_run(RunConfig().to_yaml(), name="bare")
    return run_id, rm, bare


@pytest.mark.parametrize(("kwargs", "field", "text"), [
    ({"prompt": ""}, "prompt", "type a prompt"),
    ({"prompt": "   \n"}, "prompt", "type a prompt"),
    ({"prompt": "x" * 20_001}, "prompt", "at most 20000 characters"),
    ({"settings": {"k": 0}}, "k", "between 1 and 16"),
    ({"settings": {"k": 17}}, "k", "between 1 and 16"),
    ({"settings": {"k": 2.5}}, "k", "whole number"),
    ({"settings": {"temperature": 0.0}}, "temperature", "above 0"),
    ({"settings": {"top_p": 1.5}}, "top_p", "at most 1"),
    ({"settings": {"max_new_tokens": 0}}, "max_new_tokens", "between 1 and 512"),
    ({"settings": {"beams": 2}}, "beams", "unknown generation setting"),
    ({"checkpoint_step": 2}, "checkpoint", "no policy checkpoint after step 2 (it has: 3)"),
    ({"run": "rm"}, "run", "trained a reward model, not a policy"),
    ({"run": "bare"}, "run", "has saved no checkpoint yet (queued, step 0)"),
    ({"run": "r-nope"}, "run", "no run with id 'r-nope'"),
])
def test_bad_requests_name_the_field_and_store_nothing(store, played, kwargs, field, text):
    run_id, rm, bare = played
    run = {"rm": rm, "bare": bare, None: run_id}.get(kwargs.get("run"), kwargs.get("run") or run_id)
    with pytest.raises(ConfigError) as err:
        enqueue(store, run, kwargs.get("prompt", "Hello"), kwargs.get("settings"), kwargs.get("checkpoint_step"))
    assert [e.field for e in err.value.errors] == [field]
    assert text in err.value.errors[0].message
    assert store.generations() == []


def test_a_good_request_is_queued_for_the_newest_checkpoint(store, played):
    run_id, _, _ = played
    gen_id = enqueue(store, run_id, "Hello", {"k": 3, "temperature": 0.7}, user="ann@example.com")
    g = store.get_generation(gen_id)
    assert (g.status, g.checkpoint_step, g.total, g.owner_user) == ("queued", 3, 6, "ann@example.com")
    assert g.settings == {**PlaygroundSettings().__dict__, "k": 3, "temperature": 0.7}


def test_a_run_whose_judge_the_browser_may_not_use_is_refused_from_the_browser(store, tmp_path):
    from engine.lab_settings import load_settings
    from engine.policy import BrowserPolicy

    settings = tmp_path / "lab_settings.toml"
    settings.write_text("")  # no judge listed
    policy = BrowserPolicy(load_settings(settings))
    cfg = RunConfig(name="judged")
    cfg.reward.backends = [RewardBackendSettings(kind="openai_judge", options={
        "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "LAB_FAKE_SECRET"})]
    run_id = store.create_run(cfg.to_yaml(), name="judged")
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "config.json").write_text("{}")
    store.add_checkpoint(run_id, 1, tmp_path / "policy")
    with pytest.raises(ConfigError) as err:
        enqueue(store, run_id, "Hello", policy=policy)
    assert [e.field for e in err.value.errors] == ["run"]
    assert "the lab's settings do not allow this run's reward.backends[0].kind" in err.value.errors[0].message
    assert store.generations() == []
    assert enqueue(store, run_id, "Hello")  # a Python caller has no browser policy


# ---- served by real processes, for a real tiny run ---------------------------------------------------------------


def tiny_run_config(model_dir, out_dir, classifier_dir) -> RunConfig:
    cfg = RunConfig(name="played")
    cfg.output_dir = str(out_dir)
    cfg.model.name_or_path = str(model_dir)
    cfg.model.device = "cpu"
    cfg.model.mixed_precision = "none"
    cfg.data.source = "builtin"
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.data.holdout_size = 8
    # profanity gives every word it does not know the same score (the tiny model's words: all of them); the random
    # tiny classifier scores each text differently, so a score attached to the wrong text is seen
    classifier = {"model": str(classifier_dir), "label": "hate"}
    cfg.reward.backends = [RewardBackendSettings(kind="profanity"),
                           RewardBackendSettings(kind="hf_classifier", name="tiny", weight=0.5, options=classifier)]
    cfg.evaluation.evaluator = RewardBackendSettings(kind="hf_classifier", name="judge", options=classifier)
    cfg.evaluation.samples_per_prompt, cfg.evaluation.bootstrap_samples, cfg.evaluation.relevance = 1, 100, False
    # A large learning rate: two steps move the tiny model far, so its samples differ from the base model's.
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps, cfg.ppo.learning_rate = 4, 2, 2, 2e-2
    cfg.checkpoint.every_steps, cfg.checkpoint.keep = 1, 2
    cfg.generation.max_new_tokens = 8
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_gpt2_dir, tiny_roberta_classifier_dir):
    """A completed 2-step PPO run of the tiny GPT-2 (checkpoints after steps 1 and 2, and its final policy)."""
    from engine.runner import run

    tmp = tmp_path_factory.mktemp("playground")
    cfg = tiny_run_config(tiny_gpt2_dir, tmp / "out", tiny_roberta_classifier_dir)
    with Store(tmp / "lab.db") as store:
        run_id, _ = run(cfg, store)
        assert store.get_run(run_id).status == "completed", store.get_run(run_id).error
    return tmp / "lab.db", run_id, cfg


@pytest.fixture
def lab_processes():
    """Labs that start local processes; every process they started is killed at the end."""
    labs: list[Lab] = []

    def make(db) -> Lab:
        lab = Lab(Store(db), start_worker=True)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        for proc in (lab.worker_process, lab.playground_process):
            if proc is not None and proc.poll() is None:
                proc.terminate()  # a worker unregisters on SIGTERM: the next test's lab finds no live-looking row
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
        lab.close()


def samples_of(model: ModelSettings, prompt: str, settings: dict, cfg: RunConfig) -> list[str]:
    """k samples of `prompt` drawn here from the model `model` names, as the playground draws them (same seed)."""
    from engine.evaluate import generate_responses
    from engine.models import load_policy

    gen = GenerationSettings(min_length=cfg.generation.min_length, max_new_tokens=settings["max_new_tokens"],
                             top_k=settings["top_k"], top_p=settings["top_p"], temperature=settings["temperature"])
    bundle = load_policy(model)
    responses, _, _ = generate_responses(bundle, [prompt], gen, which="before", batch_size=settings["k"],
                                         max_prompt_tokens=cfg.data.max_prompt_tokens, seed=settings["seed"],
                                         repeats=settings["k"])
    return responses


def finished(lab: Lab, gen_id: str, timeout: float = 300):
    assert wait_for(lambda: lab.generation(gen_id).finished, timeout=timeout, every=0.3), lab.generation(gen_id)
    return lab.generation(gen_id)


def test_an_idle_worker_serves_base_and_trained_samples_from_their_own_weights(tiny_run, lab_processes):
    from dataclasses import replace

    from engine.rewards import build_backend

    db, run_id, cfg = tiny_run
    lab = lab_processes(db)
    assert lab.worker_process is not None  # none served the store: the lab started one
    assert wait_for(lambda: lab.store.live_workers(), timeout=180), "the worker never registered"
    steps = lab.policy_checkpoints(run_id)
    assert steps == [2, 1] and [r.id for r in lab.policy_runs()] == [run_id]
    final = policy_checkpoints(lab.store, run_id)[0]
    assert final.path.endswith("/policy")  # the final policy ahead of the periodic checkpoint of the same step
    prompt = lab.holdout_prompts(run_id)[0]
    assert prompt in holdout_prompts(lab.store, run_id)

    settings = {"k": 3, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 8, "seed": 7}
    gen_id = lab.request_generation(run_id, prompt, settings)
    assert lab.playground_process is None  # an idle worker serves it: no extra process
    g = finished(lab, gen_id)
    assert g.status == "done", g.error
    assert g.owner == lab.store.live_workers()[0].id and g.done == g.total == 6
    res = g.result
    base = [r["response"] for r in res["base"]]
    trained = [r["response"] for r in res["trained"]]
    assert len(base) == len(trained) == 3

    # The samples are those of the base model and of the saved trained policy, drawn here with the same seed.
    used = res["prompt_used"]
    assert base == samples_of(cfg.model, used, settings, cfg)
    assert trained == samples_of(replace(cfg.model, name_or_path=final.path), used, settings, cfg)
    assert base != trained  # the trained weights are not the base's
    assert all(r["kl"] == 0.0 for r in res["base"]) and any(r["kl"] != 0.0 for r in res["trained"])

    # The scores are the backends' own: the run's reward backends and its evaluator, recomputed here.
    backends = {b.display_name: build_backend(b) for b in cfg.reward.backends}
    judge = build_backend(cfg.evaluation.evaluator)
    assert (res["backends"], res["evaluator"]) == (["profanity", "tiny"], "judge")
    for side, texts in (("base", base), ("trained", trained)):
        for name, backend in backends.items():
            want = backend.score([used] * len(texts), texts).scores
            assert [r["rewards"][name] for r in res[side]] == pytest.approx(list(want), abs=1e-6), (side, name)
        assert [r["toxicity"] for r in res[side]] == pytest.approx(list(judge.toxicity(texts)), abs=1e-6)
        assert all(r["errors"] == {} for r in res[side])
    tiny = [r["rewards"]["tiny"] for side in ("base", "trained") for r in res[side]]
    assert len({round(v, 6) for v in tiny}) > 1  # the scores tell the texts apart: a mix-up would show

    # A periodic PPO checkpoint (policy.pt) is loaded too: its samples are neither the base's nor the final's.
    early = finished(lab, lab.request_generation(run_id, prompt, settings, checkpoint_step=1))
    assert early.status == "done" and early.checkpoint_step == 1, early.error
    early_trained = [r["response"] for r in early.result["trained"]]
    assert [r["response"] for r in early.result["base"]] == base  # same seed, same base
    assert early_trained != base and early_trained != trained


def test_a_busy_worker_leaves_requests_to_the_labs_playground_process(tiny_run, lab_processes):
    db, run_id, cfg = tiny_run
    # The store's only live worker is busy with a run (a Store that registered as a worker and claimed it).
    busy = Store(db, owner=new_owner_id("w"))
    busy.register_worker(device="cpu")
    held = busy.create_run(cfg.to_yaml(), name="training", total_steps=100)
    busy.claim_run(held)
    # the worker row's current run travels with its heartbeat (a thread): wait for it, or the Lab could still see
    # an idle live worker and rightly start no playground process
    assert wait_for(lambda: [w.current_run for w in busy.list_workers()] == [held], timeout=60, every=0.02)
    try:
        lab = lab_processes(db)
        assert lab.worker_process is None  # a live worker serves the store: none started
        gen_id = lab.request_generation(run_id, "Human: hello there\n\nAssistant:", {"k": 2, "max_new_tokens": 4})
        assert lab.playground_process is not None and lab.playground_process.poll() is None
        assert "playground process" in lab.generation_waiting_for()
        g = finished(lab, gen_id)
        assert g.status == "done", g.error
        assert g.owner.startswith("pg-") and f"-{lab.playground_process.pid}-" in g.owner
        assert len(g.result["base"]) == len(g.result["trained"]) == 2
        assert busy.get_run(held).status == "running" and busy.get_run(held).owner == busy.owner  # untouched
    finally:
        busy.set_status(held, "cancelled")
        busy.unregister_worker()
        busy.close()


def test_a_checkpoint_gone_from_disk_fails_the_request_with_the_reason(tiny_run, lab_processes, tmp_path):
    db, run_id, _ = tiny_run
    quiet = Lab(Store(db))  # queues only: nothing serves the request until the checkpoint is gone
    ckpt = next(c for c in policy_checkpoints(quiet.store, run_id) if c.step == 1)
    gen_id = quiet.request_generation(run_id, "Hello", {"k": 1, "max_new_tokens": 4}, checkpoint_step=1)
    quiet.close()
    kept = tmp_path / "kept"
    shutil.move(ckpt.path, kept)  # pruned between the request and its serving
    try:
        lab = lab_processes(db)
        g = finished(lab, gen_id)
        assert g.status == "failed" and "FileNotFoundError" in g.error and "gone from disk" in g.error
    finally:
        shutil.move(kept, ckpt.path)  # the next tests find it where it was
