"""bench/split_table.py's "training reward" column: each reward signal's first-quarter mean against its last-quarter
mean, from the store's metrics."""

from bench import split_table
from engine.store import Store


def test_reward_moves_compares_the_first_and_the_last_quarter_of_steps(tmp_path):
    with Store(str(tmp_path / "store.db")) as store:
        run_id = store.create_run("name: t\n", name="t")
        for step in range(8):  # quarters of 2 steps: steps 0-1 and 6-7
            store.log_metrics(run_id, step, {"env/reward/profanity": float(step), "env/reward/profanity/p_offensive":
                                             0.1 - 0.01 * step, "objective/kl": 99.0})
        moves = split_table.reward_moves(store, run_id)
    assert moves == "profanity 0.5 -> 6.5, profanity/p_offensive 0.095 -> 0.035"


def test_reward_moves_says_nothing_without_two_steps_of_reward_metrics(tmp_path):
    with Store(str(tmp_path / "store.db")) as store:
        run_id = store.create_run("name: t\n", name="t")
        store.log_metrics(run_id, 0, {"env/reward/profanity": 1.0})
        store.log_metrics(run_id, 1, {"objective/kl": 1.0})  # a second step, but not of a reward
        assert split_table.reward_moves(store, run_id) == "-"
        other = store.create_run("name: u\n", name="u")
        for step in range(4):
            store.log_metrics(other, step, {"objective/kl": 1.0})
        assert split_table.reward_moves(store, other) == "-"
