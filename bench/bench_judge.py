"""Measure LLM-judge throughput: concurrency, and throughput under throttling (botocore retry modes).

1. Concurrency: N judge calls against a local endpoint with a fixed latency per call, sequential (one call at a
   time, as the seed did) vs one batch through the judge's concurrent path. Target: the batch takes at most
   2 x one call's latency.
2. Throttling: N calls each throttled T times (HTTP 429 ThrottlingException) in one batch, then a batch of M
   calls that are not throttled, on the same judge: wall time, calls that got no score (timeouts / errors),
   retries. Bedrock with botocore's `standard` retry mode (the default) and `adaptive` (the old default), and the
   OpenAI-compatible judge's own backoff.

Usage: python bench/bench_judge.py [--calls 16] [--latency 0.2] [--workers 16 8]
                                   [--throttled 16] [--throttles 2] [--after 64] [--timeout 30] [--smoke]
--smoke runs every part on a few calls in seconds and checks the scores (CI runs it; the numbers mean little).
Runs the real clients (boto3, httpx/requests) against tests/judge_server.py on 127.0.0.1; dummy AWS
credentials are set for this process only. Not a test.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from judge_server import FakeJudgeServer  # noqa: E402

from engine.rewards.bedrock_judge import BedrockJudge  # noqa: E402
from engine.rewards.openai_judge import OpenAIJudge  # noqa: E402


def make_judge(kind: str, url: str, workers: int, timeout_s: float = 10, retry_mode: str = "standard"):
    if kind == "bedrock":
        return BedrockJudge(endpoint_url=url, max_workers=workers, cache=False, timeout_s=timeout_s,
                            retry_mode=retry_mode, max_failed_steps=1000, name="bench")
    return OpenAIJudge(base_url=url + "/v1", model="bench", max_workers=workers, cache=False, timeout_s=timeout_s,
                       max_failed_steps=1000, name="bench")


def bench_concurrency(kind: str, url: str, n: int, workers: int) -> None:
    judge = make_judge(kind, url, workers)
    judge.score(["p"] * workers, [f"warm-up {i}" for i in range(workers)])  # open the pooled connections
    prompts = ["Summarize the following conversation."] * n
    responses = [f"[[reply:{(i % 11) - 5}]] response {i}" for i in range(n)]

    t0 = time.perf_counter()
    seq = [judge.score([p], [r]).scores[0] for p, r in zip(prompts, responses, strict=True)]
    t_seq = time.perf_counter() - t0

    t0 = time.perf_counter()
    batch = judge.score(prompts, responses).scores
    t_batch = time.perf_counter() - t0
    judge.close()

    assert seq == batch == [float((i % 11) - 5) for i in range(n)], "judges disagree"
    one = t_seq / n
    waves = -(-n // workers)  # calls a worker makes in turn: the floor of the batch time, in calls
    print(f"{kind:8s} workers={workers:2d}  sequential {t_seq:6.3f} s ({one * 1000:5.1f} ms/call)  "
          f"concurrent {t_batch:6.3f} s  speed-up {t_seq / t_batch:5.2f}x  "
          f"batch = {t_batch / one:4.2f} x one call (floor {waves})  "
          f"[target <= 2: {'ok' if t_batch <= 2 * one else 'missed'}]")


def bench_throttling(label: str, kind: str, retry_mode: str, url: str, args: argparse.Namespace, run: int) -> None:
    judge = make_judge(kind, url, args.workers[0], timeout_s=args.timeout, retry_mode=retry_mode)
    judge.score(["p"] * args.workers[0], [f"warm-up {label} {run} {i}" for i in range(args.workers[0])])
    before = judge.metrics()
    throttled = [f"[[throttle:{args.throttles}]] [[reply:{(i % 11) - 5}]] thr {label} {run} {i}"
                 for i in range(args.throttled)]
    t0 = time.perf_counter()
    first = judge.score(["p"] * len(throttled), throttled)
    t_first = time.perf_counter() - t0
    after = [f"[[reply:{(i % 11) - 5}]] after {label} {run} {i}" for i in range(args.after)]
    t0 = time.perf_counter()
    second = judge.score(["p"] * len(after), after)
    t_second = time.perf_counter() - t0
    m = judge.metrics()
    judge.close()
    lost_first = first.valid.count(False)
    lost_second = second.valid.count(False)
    retries = m["judge/bench/retries"] - before["judge/bench/retries"]
    if args.smoke:  # the smoke's check: every call scored, every throttle retried
        assert lost_first == lost_second == 0, (label, lost_first, lost_second)
        assert first.scores == [float((i % 11) - 5) for i in range(args.throttled)], label
        assert retries == args.throttled * args.throttles, (label, retries)
    print(f"{label:24s} run {run}  throttled batch of {args.throttled}: {t_first:6.2f} s, "
          f"{lost_first:2d} without a score, {retries:3.0f} retries  |  next batch of {args.after}: "
          f"{t_second:6.2f} s, {lost_second:2d} without a score")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2, help="artificial seconds per call at the endpoint")
    ap.add_argument("--workers", type=int, nargs="+", default=[16, 8])
    ap.add_argument("--throttled", type=int, default=16, help="calls in the throttled batch")
    ap.add_argument("--throttles", type=int, default=2, help="429s each throttled call gets before its answer")
    ap.add_argument("--after", type=int, default=64, help="calls in the batch after the throttled one")
    ap.add_argument("--timeout", type=float, default=30, help="the judges' timeout_s (their default: 30)")
    ap.add_argument("--runs", type=int, default=2, help="repeats of the throttling part")
    ap.add_argument("--modes", nargs="+", default=["standard", "adaptive", "openai"],
                    help="throttling part: bedrock retry modes and/or 'openai'")
    ap.add_argument("--smoke", action="store_true", help="a few calls of every part, in seconds (CI)")
    args = ap.parse_args()
    logging.getLogger("engine.rewards").setLevel(logging.ERROR)  # the bench reports the failures itself
    if args.smoke:
        args.calls, args.latency, args.workers = 4, 0.01, [4]
        args.throttled, args.throttles, args.after, args.runs = 4, 1, 8, 1
        args.modes = ["standard", "openai"]  # adaptive can take tens of seconds once throttled: manual runs only
    # Dummy credentials for the local endpoint only (botocore signs every request).
    os.environ.update(AWS_ACCESS_KEY_ID="AKIABENCHDUMMY", AWS_SECRET_ACCESS_KEY="bench-dummy",
                      AWS_EC2_METADATA_DISABLED="true")
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    with FakeJudgeServer(latency_s=args.latency) as server:
        print(f"1. concurrency: {args.calls} judge calls, {args.latency * 1000:.0f} ms endpoint latency each")
        for kind in ("bedrock", "openai"):
            for workers in args.workers:
                bench_concurrency(kind, server.url, args.calls, workers)
    with FakeJudgeServer(latency_s=0.0) as server:
        print(f"2. throttling: {args.throttled} calls x {args.throttles} throttles, then {args.after} calls; "
              f"{args.workers[0]} workers, timeout_s {args.timeout:g}, max_attempts 5")
        for run in range(1, args.runs + 1):
            for mode in args.modes:
                if mode == "openai":
                    bench_throttling("openai (own backoff)", "openai", "standard", server.url, args, run)
                else:
                    bench_throttling(f"bedrock {mode}", "bedrock", mode, server.url, args, run)


if __name__ == "__main__":
    main()
