"""Measure judge concurrency: 16 judge calls against a local fake endpoint with 200 ms latency per call,
sequential (one call at a time, as the seed did) vs one batch through the backend's concurrent path.

Usage: python bench/bench_judge.py [--calls 16] [--latency 0.2] [--workers 16 8]
Runs the real clients (boto3 for Bedrock Converse, httpx/requests for the OpenAI-compatible judge) against
tests/judge_server.py on 127.0.0.1; dummy AWS credentials are set for this process only. Target: the
concurrent batch takes at most 2 x one call's latency. Not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from judge_server import FakeJudgeServer  # noqa: E402

from engine.rewards.bedrock_judge import BedrockJudge  # noqa: E402
from engine.rewards.openai_judge import OpenAIJudge  # noqa: E402


def make_judge(kind: str, url: str, workers: int):
    if kind == "bedrock":
        return BedrockJudge(endpoint_url=url, max_workers=workers, cache=False, timeout_s=10)
    return OpenAIJudge(base_url=url + "/v1", model="bench", max_workers=workers, cache=False, timeout_s=10)


def bench(kind: str, url: str, n: int, workers: int, latency: float) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2, help="artificial seconds per call at the endpoint")
    ap.add_argument("--workers", type=int, nargs="+", default=[16, 8])
    args = ap.parse_args()
    # Dummy credentials for the local endpoint only (botocore signs every request).
    os.environ.update(AWS_ACCESS_KEY_ID="AKIABENCHDUMMY", AWS_SECRET_ACCESS_KEY="bench-dummy",
                      AWS_EC2_METADATA_DISABLED="true")
    with FakeJudgeServer(latency_s=args.latency) as server:
        print(f"{args.calls} judge calls, {args.latency * 1000:.0f} ms endpoint latency each")
        for kind in ("bedrock", "openai"):
            for workers in args.workers:
                bench(kind, server.url, args.calls, workers, args.latency)


if __name__ == "__main__":
    main()
