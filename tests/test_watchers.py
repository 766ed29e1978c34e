"""app/watchers.py: the Live tabs polling a run are counted so that they share one redraw budget."""

from app.watchers import Watchers


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_distinct_tabs_within_the_ttl_are_counted_per_run():
    clock = Clock()
    w = Watchers(ttl_s=15.0, clock=clock)
    assert w.seen("r1", "tabA") == 1
    assert w.seen("r1", "tabA") == 1  # the same tab polling again is one watcher
    clock.t += 4
    assert w.seen("r1", "tabB") == 2
    assert w.seen("r2", "tabC") == 1  # another run's tabs are not this run's
    clock.t += 12  # tabA last polled 16 s ago (hidden or closed): it drops out; tabB polled 12 s ago
    assert w.seen("r1", "tabB") == 1
    clock.t += 20
    assert w.seen("r1", "tabD") == 1


def test_a_bad_or_missing_id_counts_the_caller_but_is_not_recorded():
    clock = Clock()
    w = Watchers(clock=clock)
    assert w.seen("r1", None) == 1
    assert w.seen("r1", "") == 1
    assert w.seen("r1", "x" * 33) == 1  # too long
    assert w.seen("r1", "<script>") == 1
    assert w.seen("r1", "tabA") == 1  # none of the above was kept
    assert w.seen("r1", None) == 2  # the recorded tab plus the caller


def test_memory_is_bounded_oldest_first():
    clock = Clock()
    w = Watchers(ttl_s=1000.0, clock=clock, max_ids=5)
    for i in range(8):
        clock.t += 1
        w.seen(f"r{i % 2}", f"t{i}")
    held = sum(len(v) for v in w._seen.values())
    assert held == 5
    assert "t0" not in w._seen.get("r0", {}) and "t7" in w._seen["r1"]  # the least recently seen went first
