#!/usr/bin/env python3
"""`lameduck lint` at scale: wall time and peak resident memory on the stream that
`bench/lint_corpus.py` writes (10,000 workloads with their Services, PDBs and HPAs), for each
output format, median of ROUNDS runs. Each run is a fresh process; its peak RSS comes from
wait4's rusage, so no tool beyond Python is needed.

Usage: bench/lint_scale.py [--lameduck BIN] [--rounds N] [--corpus FILE]
  BIN defaults to target/release/lameduck (build it with `cargo build --release -p lameduck`).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_once(binary, fmt, corpus):
    start = time.monotonic()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen([binary, "lint", "--fail-on", "never", "--format", fmt, corpus],
                                stdout=null, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{binary} lint --format {fmt} {corpus} exited {code}: {err.strip()}")
    return wall, usage.ru_maxrss / 1024.0  # KiB -> MiB


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lameduck", default=os.path.join(HERE, "..", "target", "release", "lameduck"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--corpus", default="/tmp/lameduck-lint-corpus.yaml")
    args = ap.parse_args()
    if not os.access(args.lameduck, os.X_OK):
        sys.exit(f"{args.lameduck} is not there: build it with `cargo build --release -p lameduck`, or pass --lameduck BIN")
    if not os.path.exists(args.corpus):
        subprocess.run([sys.executable, os.path.join(HERE, "lint_corpus.py"), args.corpus], check=True)
    size = os.path.getsize(args.corpus) / 1e6
    with open(args.corpus, encoding="utf-8") as f:
        objects = sum(1 for line in f if line.startswith("kind:"))
    print(f"corpus: {args.corpus}, {size:.1f} MB, {objects} objects; {args.rounds} rounds per format")
    print("| format | wall s (median) | min–max | peak RSS MiB (median) | max |")
    print("|---|---:|---:|---:|---:|")
    for fmt in ("json", "human", "sarif"):
        runs = [run_once(args.lameduck, fmt, args.corpus) for _ in range(args.rounds)]
        walls = [w for w, _ in runs]
        rss = [r for _, r in runs]
        print(f"| {fmt} | {statistics.median(walls):.2f} | {min(walls):.2f}–{max(walls):.2f} | "
              f"{statistics.median(rss):.1f} | {max(rss):.1f} |")


if __name__ == "__main__":
    main()
