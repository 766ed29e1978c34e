"""The result sentence and the one sign convention (app.results)."""

from __future__ import annotations

from app import results


def test_change_pct_is_after_minus_before_over_before():
    assert results.change_pct(0.5, 0.25) == -50.0  # less toxic: negative
    assert abs(results.change_pct(0.2, 0.3) - 50.0) < 1e-9
    assert results.change_pct(0.0, 0.3) is None and results.change_pct(None, 0.3) is None


def test_sentences_and_colours():
    assert results.result_sentence({"pct_improvement_mean": 68.0, "pct_ci_low": 60.0, "pct_ci_high": 75.0}) == \
        ("Toxicity fell 68.0 % (95 % CI 60–75 %), significant.", "good")
    text, kind = results.result_sentence({"pct_improvement_mean": 26.6, "pct_ci_low": -23.0, "pct_ci_high": 101.0})
    assert kind == "neutral" and text == ("Toxicity fell 26.6 %, not significant: the 95 % CI of the change, "
                                          "-101 % to +23 %, crosses 0.")
    assert results.result_sentence({"pct_improvement_mean": -12.0, "pct_ci_low": -20.0, "pct_ci_high": -4.0})[1] \
        == "bad"
    assert results.result_sentence({})[1] == "neutral"


def test_strip_template_keeps_the_dialogue():
    template = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:"
    prompt = template.format(dialogue="Human: hi\n\nAssistant: hello")
    assert results.strip_template(prompt, template) == "Human: hi\n\nAssistant: hello"
    assert results.strip_template("not from it", template) == "not from it"
    assert results.strip_template(prompt, None) == prompt


def test_config_diff_lists_only_the_fields_that_differ():
    from engine.config import RunConfig

    a, b = RunConfig(name="a").to_dict(), RunConfig(name="b").to_dict()
    b["ppo"]["learning_rate"] = 1e-5
    diff = results.config_diff({"run a": a, "run b": b})
    assert list(diff["field"]) == ["ppo.learning_rate"]  # the name differs too, but says nothing
    assert diff.iloc[0]["run b"] == "1e-05"
    assert results.config_diff({"run a": a, "run a2": RunConfig(name="a").to_dict()}).empty


def test_key_hyperparameters_from_the_methods_own_section():
    from engine.config import RunConfig

    ppo = results.key_hyperparameters(RunConfig().to_dict())
    assert ppo["steps"] == RunConfig().ppo.max_ppo_steps and ppo["KL coef"] == RunConfig().ppo.init_kl_coef
    dpo = RunConfig(method="dpo").to_dict()
    assert results.key_hyperparameters(dpo)["learning rate"] == RunConfig().dpo.learning_rate
