#!/usr/bin/env python3
"""Measures the same workloads directly, through `lameduck gate`, nginx and HAProxy, in one run.

Usage: bench/run.py [--quick] [--only short,stream,idle,drain] [--unpinned] [--compare OTHER_LAMEDUCK]

Everything listens on 127.0.0.1. The proxy under test runs pinned to CPU 1; the engine
(engine-sim) and the load generator share CPU 0, so every proxy gets the same single core.
With `--unpinned`, nothing is pinned: every process may run on every CPU, and the gate uses
its default runtime (one worker thread per CPU), as it would in a pod without a CPU limit.
Installs nginx, HAProxy and wrk from Debian's packages when missing; builds lameduck and the
SSE load client in release mode. Prints Markdown tables (the ones in docs/benchmarks.md).

`--compare BIN` adds a second gate, `gate-b`, run from another lameduck binary (a build of an
earlier commit, say) in the same interleaved rounds: the way to tell whether a change helped
on a machine whose run-to-run noise is larger than most changes.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LAMEDUCK = ROOT / "target/release/lameduck"
SSE_LOAD = ROOT / "target/release/examples/sse_load"
UP_PORT, GATE_PORT, ADMIN_PORT, NGINX_PORT, HAPROXY_PORT = 28001, 28010, 28011, 28020, 28030
GATE_B_PORT, ADMIN_B_PORT = 28012, 28013
COMPARE = None  # another lameduck binary, measured as `gate-b` (--compare)
PROXY_CPU, LOAD_CPU = "1", "0"
UNPINNED = False  # --unpinned: no taskset at all


def pin(cpu):
    """The `taskset` prefix that pins a command to `cpu`, or none with --unpinned."""
    return [] if UNPINNED else ["taskset", "-c", cpu]
CONVERGENCE_MIN = 5  # seconds; the gate's default --convergence-min, passed explicitly


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def ensure_tools(build=True):
    missing = [p for p, b in [("nginx-light", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk")]
               if not shutil.which(b) and not Path(f"/usr/sbin/{b}").exists()]
    if missing:
        print(f"installing {' '.join(missing)} from Debian's packages", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not build:
        return
    print("building lameduck and the SSE load client (release)", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "lameduck"], check=True, cwd=ROOT)
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "lameduck-gate", "--example", "sse_load"],
                   check=True, cwd=ROOT)


def wait_port(port, timeout=20.0):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def proc_tree(pid):
    """pid and all its descendants."""
    pids = [pid]
    try:
        out = sh(["pgrep", "-P", str(pid)]).stdout.split()
    except subprocess.CalledProcessError:
        out = []
    for child in out:
        pids.extend(proc_tree(int(child)))
    return pids


def cpu_seconds(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / tick


def rss_mib(pids):
    kib = 0
    for pid in pids:
        try:
            m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
            kib += int(m.group(1)) if m else 0
        except FileNotFoundError:
            pass
    return kib / 1024


class Proxies:
    """Starts the engine and the three proxies; `targets` maps a name to (port, pids)."""

    def __init__(self, work, engine_args):
        self.work = work
        self.procs = []
        try:
            self.start(engine_args)
        except BaseException:
            self.close()
            raise

    def start(self, engine_args):
        work = self.work
        self.engine = self.spawn([LAMEDUCK, "engine-sim", "--listen", f"127.0.0.1:{UP_PORT}", *engine_args],
                                 LOAD_CPU, "engine.log")
        wait_port(UP_PORT)
        self.gate = self.spawn([LAMEDUCK, "gate", "--listen", f"127.0.0.1:{GATE_PORT}",
                                "--admin", f"127.0.0.1:{ADMIN_PORT}", "--upstream", f"http://127.0.0.1:{UP_PORT}",
                                "--grace-period", "120"], PROXY_CPU, "gate.log")
        self.gate_b = None
        if COMPARE:
            self.gate_b = self.spawn([COMPARE, "gate", "--listen", f"127.0.0.1:{GATE_B_PORT}",
                                      "--admin", f"127.0.0.1:{ADMIN_B_PORT}",
                                      "--upstream", f"http://127.0.0.1:{UP_PORT}", "--grace-period", "120"],
                                     PROXY_CPU, "gate-b.log")
        for name, port in [("nginx", NGINX_PORT), ("haproxy", HAPROXY_PORT)]:
            src = (BENCH / f"{name}.conf.in" if name == "nginx" else BENCH / "haproxy.cfg.in").read_text()
            cfg = Path(work) / f"{name}.conf"
            cfg.write_text(src.replace("@WORK@", str(work)).replace("@PORT@", str(port))
                           .replace("@UPSTREAM_PORT@", str(UP_PORT)))
        (Path(work) / "nginx-body").mkdir(exist_ok=True)
        (Path(work) / "nginx-proxy").mkdir(exist_ok=True)
        self.nginx = self.spawn(["nginx", "-c", Path(work) / "nginx.conf"], PROXY_CPU, "nginx.log")
        self.haproxy = self.spawn(["haproxy", "-db", "-f", Path(work) / "haproxy.conf"], PROXY_CPU, "haproxy.log")
        for port in (GATE_PORT, NGINX_PORT, HAPROXY_PORT, *([GATE_B_PORT] if COMPARE else [])):
            wait_port(port)
        time.sleep(0.5)
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0 if UNPINNED else 3]} exited at start (status {p.returncode}); see its log in {work}")

    def spawn(self, cmd, cpu, log):
        p = subprocess.Popen([*pin(cpu), *map(str, cmd)], stdout=subprocess.DEVNULL,
                             stderr=open(Path(self.work) / log, "w"), start_new_session=True)
        self.procs.append(p)
        return p

    def targets(self):
        t = {
            "direct": (UP_PORT, []),
            "gate": (GATE_PORT, proc_tree(self.gate.pid)),
            "nginx": (NGINX_PORT, proc_tree(self.nginx.pid)),
            "haproxy": (HAPROXY_PORT, proc_tree(self.haproxy.pid)),
        }
        if self.gate_b:
            t["gate-b"] = (GATE_B_PORT, proc_tree(self.gate_b.pid))
        return t

    def close(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def short_requests(work, rounds, seconds, conns):
    px = Proxies(work, [])
    try:
        results = {name: [] for name in px.targets()}
        for r in range(rounds):
            for name, (port, pids) in px.targets().items():
                url = f"http://127.0.0.1:{port}/v1/models"
                # Warm-up, then the measured run.
                subprocess.run([*pin(LOAD_CPU), "wrk", "-t1", f"-c{conns}", "-d1s", url],
                               capture_output=True, check=True)
                cpu0 = cpu_seconds(pids)
                out = sh([*pin(LOAD_CPU), "wrk", "-t1", f"-c{conns}", f"-d{seconds}s",
                          "-s", BENCH / "latency.lua", url]).stdout
                cpu = cpu_seconds(pids) - cpu0
                m = dict(re.findall(r"(\w+)=([\d.]+)", out.split("RESULT", 1)[1]))
                row = {k: float(v) for k, v in m.items()}
                row["cpu_us_per_req"] = cpu / row["requests"] * 1e6 if pids else 0.0
                results[name].append(row)
                print(f"  short round {r + 1} {name}: {row['rps']:.0f} req/s p99 {row['p99_us']:.0f} µs",
                      file=sys.stderr)
        return {n: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for n, rows in results.items()}
    finally:
        px.close()


def ctx_switches(pids):
    """Voluntary context switches summed over pids: how often the proxy went to sleep."""
    total = 0
    for pid in pids:
        try:
            m = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
            total += int(m.group(1)) if m else 0
        except FileNotFoundError:
            pass
    return total


def streaming(work, streams, tokens, rate, rounds, ramp=2.0):
    """`rounds` interleaved rounds over the targets; the median round of each target is kept.

    Besides the whole run, CPU is also read over a steady window in which every stream is
    open (from ramp + 0.5 s until the first stream could end), where the event rate is known:
    streams × rate. That figure leaves connection set-up and teardown out."""
    px = Proxies(work, ["--tokens-per-second", str(rate), "--ttft", "100ms"])
    window = (ramp + 0.5, tokens / rate - 0.2)
    try:
        runs = {name: [] for name in px.targets()}
        for rnd in range(rounds):
            for name, (port, pids) in px.targets().items():
                cpu0 = cpu_seconds(pids)
                rss_before = rss_mib(pids) if pids else 0.0
                load = subprocess.Popen([*pin(LOAD_CPU), SSE_LOAD,
                                         f"http://127.0.0.1:{port}/v1/chat/completions",
                                         str(streams), str(tokens), str(rate), str(ramp)],
                                        stdout=subprocess.PIPE, text=True)
                t0 = time.time()
                rss, marks = 0.0, []
                # Peak memory: sample while every stream is open; CPU at the window's edges.
                while load.poll() is None and time.time() < t0 + tokens / rate + ramp + 60:
                    if pids:
                        rss = max(rss, rss_mib(pids))
                    el = time.time() - t0
                    if len(marks) < 2 and el >= window[len(marks)]:
                        marks.append((time.time(), cpu_seconds(pids), ctx_switches(pids)))
                    time.sleep(0.1)
                out, _ = load.communicate(timeout=120)
                cpu = cpu_seconds(pids) - cpu0
                r = json.loads(out)
                r["cpu_ms"] = cpu * 1000
                r["cpu_us_per_1000_events"] = cpu / r["events"] * 1e9 if pids and r["events"] else 0.0
                r["steady_us_per_1000_events"] = 0.0
                r["sleeps_per_1000_events"] = 0.0
                if pids and len(marks) == 2 and marks[1][0] > marks[0][0]:
                    events = streams * rate * (marks[1][0] - marks[0][0])
                    r["steady_us_per_1000_events"] = (marks[1][1] - marks[0][1]) / events * 1e9
                    r["sleeps_per_1000_events"] = (marks[1][2] - marks[0][2]) / events * 1000
                r["rss_mib"] = rss
                r["rss_before_mib"] = rss_before
                # Where memory settles once the load is over.
                time.sleep(5)
                r["rss_after_mib"] = rss_mib(pids) if pids else 0.0
                runs[name].append(r)
                print(f"  stream round {rnd + 1} {name}: {r['streams_ok']}/{streams} ok, {r['events']} events, "
                      f"cpu {cpu:.2f}s ({r['cpu_us_per_1000_events']:.0f} µs/1000 events, steady "
                      f"{r['steady_us_per_1000_events']:.0f}), rss {rss_before:.1f} → {rss:.1f} → "
                      f"{r['rss_after_mib']:.1f} MiB (5 s after), "
                      f"lateness p99 {r['lateness_us']['p99']} µs", file=sys.stderr)
                time.sleep(1)
        # The median round by whole-run CPU (by lateness for direct, which has no proxy CPU). RSS
        # is the highest of the rounds instead: the proxies stay up across rounds, and memory
        # freed after one round may stay resident, so the later rounds show where it settles.
        key = lambda r: (r["cpu_us_per_1000_events"], r["lateness_us"]["p99"])
        return {name: sorted(rs, key=key)[len(rs) // 2]
                | {"rounds": len(rs), "rss_mib": max(r["rss_mib"] for r in rs),
                   "rss_by_round": [r["rss_mib"] for r in rs],
                   "rss_after_max_mib": max(r["rss_after_mib"] for r in rs),
                   "rss_idle_mib": rs[0]["rss_before_mib"]}
                for name, rs in runs.items()}
    finally:
        px.close()


def idle_connections(work, conns, seconds):
    """Memory under many keep-alive connections, and after they close: wrk keeps `conns`
    connections busy for `seconds`, then closes them all; RSS before, at the peak, and 5 s
    after."""
    px = Proxies(work, [])
    try:
        rows = {}
        for name, (port, pids) in px.targets().items():
            if not pids:
                continue
            before = rss_mib(pids)
            url = f"http://127.0.0.1:{port}/v1/models"
            load = subprocess.Popen([*pin(LOAD_CPU), "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            peak = before
            while load.poll() is None:
                peak = max(peak, rss_mib(pids))
                time.sleep(0.1)
            out = load.communicate()[0]
            errors = re.search(r"Socket errors: (.*)", out)
            time.sleep(5)
            rows[name] = {"before": before, "peak": peak, "after": rss_mib(pids),
                          "errors": errors.group(1).strip() if errors else "none"}
            print(f"  idle {name}: rss {before:.1f} → {peak:.1f} → {rows[name]['after']:.1f} MiB",
                  file=sys.stderr)
        return rows
    finally:
        px.close()


def drain(work, streams, rate, max_seconds):
    """SIGTERM to a gate wrapping engine-sim with `streams` streams of known remaining length
    (evenly spread from 1 s to max_seconds); overshoot = gate exit − end of the longest stream."""
    log = open(Path(work) / "drain-gate.log", "w")
    gate = subprocess.Popen([*pin(PROXY_CPU), LAMEDUCK, "gate", "--listen", f"127.0.0.1:{GATE_PORT}",
                             "--admin", f"127.0.0.1:{ADMIN_PORT}", "--upstream", f"http://127.0.0.1:{UP_PORT}",
                             "--grace-period", "300", "--convergence-min", str(CONVERGENCE_MIN), "--", LAMEDUCK, "engine-sim", "--listen", f"127.0.0.1:{UP_PORT}",
                             "--tokens-per-second", str(rate), "--ttft", "10ms", "--on-sigterm", "abort"],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(GATE_PORT)
        deadline = time.time() + 20
        while sh(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{ADMIN_PORT}/ready"],
                 ).stdout != "200" and time.time() < deadline:
            time.sleep(0.05)
        clients = []
        for i in range(streams):
            secs = 1 + (max_seconds - 1) * i / max(streams - 1, 1)
            body = json.dumps({"model": "sim-llm", "stream": True, "max_tokens": int(secs * rate),
                               "messages": [{"role": "user", "content": "x"}]})
            clients.append(subprocess.Popen(
                [*pin(LOAD_CPU), "curl", "-sN", "-o", "/dev/null", "-w", "%{http_code}",
                 f"http://127.0.0.1:{GATE_PORT}/v1/chat/completions", "-H", "content-type: application/json",
                 "-d", body], stdout=subprocess.PIPE, text=True))
        time.sleep(0.5)
        t_term = time.time()
        gate.send_signal(signal.SIGTERM)
        ends = []
        for c in clients:
            code = c.communicate()[0]
            ends.append(time.time())
            if code != "200":
                raise RuntimeError(f"a stream failed with HTTP {code}")
        last_end = max(ends)
        gate.wait(timeout=max_seconds + 60)
        t_exit = time.time()
        report = json.loads(Path(work, "drain-gate.log").read_text().strip().splitlines()[-1])
        # The gate keeps announcing for at least --convergence-min after SIGTERM, so it can
        # never exit before that, however short the streams.
        floor = max(last_end, t_term + CONVERGENCE_MIN)
        return {"streams": streams, "sigterm_to_exit_s": t_exit - t_term, "last_stream_end_s": last_end - t_term,
                "overshoot_s": t_exit - floor, "completed": report["completed"], "truncated": report["truncated"]}
    finally:
        if gate.poll() is None:
            gate.kill()
            gate.wait()


def table(rows, cols):
    head = "| " + " | ".join(c[0] for c in cols) + " |"
    sep = "|" + "|".join("---:" if i else "---" for i in range(len(cols))) + "|"
    lines = [head, sep]
    for r in rows:
        lines.append("| " + " | ".join(c[1](r) for c in cols) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, short runs, 200 streams")
    ap.add_argument("--only", default="short,stream,idle,drain")
    ap.add_argument("--unpinned", action="store_true",
                    help="pin nothing: every process may use every CPU (the gate uses its default runtime)")
    ap.add_argument("--compare", metavar="LAMEDUCK", help="another lameduck binary, measured as gate-b")
    ap.add_argument("--lameduck", metavar="BIN",
                    help="measure this lameduck binary instead of building target/release/lameduck")
    args = ap.parse_args()
    global COMPARE, UNPINNED, LAMEDUCK
    UNPINNED = args.unpinned
    if args.lameduck:
        LAMEDUCK = Path(args.lameduck).resolve()
    if args.compare:
        COMPARE = str(Path(args.compare).resolve())
        if not os.access(COMPARE, os.X_OK):
            sys.exit(f"--compare {args.compare}: not an executable file; give the path of a lameduck binary")
    only = set(args.only.split(","))
    ensure_tools(build=not args.lameduck)
    rounds, secs, streams, tokens = (1, 3, 200, 40) if args.quick else (3, 10, 1000, 150)
    stream_rounds = 1 if args.quick else 3
    info = {
        "cpu": re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1),
        "cores": os.cpu_count(),
        "kernel": os.uname().release,
        "nginx": sh(["nginx", "-v"]).stderr.strip(),
        "haproxy": sh(["haproxy", "-v"]).stdout.splitlines()[0],
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
        "lameduck": sh([LAMEDUCK, "--version"]).stdout.strip(),
        **({"gate-b": f"{COMPARE} ({sh([COMPARE, '--version']).stdout.strip()})"} if COMPARE else {}),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "pinning": "none (--unpinned)" if UNPINNED else f"proxy on CPU {PROXY_CPU}, engine and load on CPU {LOAD_CPU}",
    }
    print("## Machine\n")
    for k, v in info.items():
        print(f"- {k}: {v}")
    with tempfile.TemporaryDirectory(prefix="lameduck-bench-") as work:
        if "short" in only:
            conns = 64
            print(f"\n## Short requests: GET /v1/models, {conns} connections, {secs} s x {rounds} rounds (median)\n",
                  flush=True)
            s = short_requests(work, rounds, secs, conns)
            d, rows = s["direct"], []
            for name, r in s.items():
                r["name"] = name
                rows.append(r)
            print(table(rows, [
                ("target", lambda r: r["name"]),
                ("req/s", lambda r: f"{r['rps']:.0f}"),
                ("p50 µs", lambda r: f"{r['p50_us']:.0f}"),
                ("p99 µs", lambda r: f"{r['p99_us']:.0f}"),
                ("p99.9 µs", lambda r: f"{r['p999_us']:.0f}"),
                ("added p99 µs", lambda r: f"{r['p99_us'] - d['p99_us']:.0f}" if r["name"] != "direct" else "—"),
                ("proxy CPU µs/req", lambda r: f"{r['cpu_us_per_req']:.1f}" if r["name"] != "direct" else "—"),
                ("errors", lambda r: f"{r['errors']:.0f}"),
            ]))
            g = s["gate"]
            light = short_requests(work, rounds, max(secs // 2, 2), 4)
            print(f"\nLight load (4 connections, so latency is service time rather than queueing):\n")
            ld = light["direct"]
            print(table([{**v, "name": k} for k, v in light.items()], [
                ("target", lambda r: r["name"]),
                ("req/s", lambda r: f"{r['rps']:.0f}"),
                ("p50 µs", lambda r: f"{r['p50_us']:.0f}"),
                ("p99 µs", lambda r: f"{r['p99_us']:.0f}"),
                ("p99.9 µs", lambda r: f"{r['p999_us']:.0f}"),
                ("added p50 µs", lambda r: f"{r['p50_us'] - ld['p50_us']:.0f}" if r["name"] != "direct" else "—"),
                ("added p99 µs", lambda r: f"{r['p99_us'] - ld['p99_us']:.0f}" if r["name"] != "direct" else "—"),
            ]))
            print(f"\nRatios: throughput gate/direct {g['rps'] / d['rps']:.2f}, gate/nginx {g['rps'] / s['nginx']['rps']:.2f}, "
                  f"gate/HAProxy {g['rps'] / s['haproxy']['rps']:.2f}; proxy CPU per request gate/nginx "
                  f"{g['cpu_us_per_req'] / s['nginx']['cpu_us_per_req']:.2f}, gate/HAProxy "
                  f"{g['cpu_us_per_req'] / s['haproxy']['cpu_us_per_req']:.2f}"
                  + (f"; gate/gate-b throughput {g['rps'] / s['gate-b']['rps']:.2f}, CPU per request "
                     f"{g['cpu_us_per_req'] / s['gate-b']['cpu_us_per_req']:.2f}" if COMPARE else ""), flush=True)
        if "stream" in only:
            rate = 10
            print(f"\n## Streaming: {streams} concurrent SSE streams, {tokens} tokens each at {rate} tokens/s, "
                  f"{stream_rounds} rounds (median)\n", flush=True)
            st = streaming(work, streams, tokens, rate, stream_rounds)
            d = st["direct"]
            print(table([{**v, "name": k} for k, v in st.items()], [
                ("target", lambda r: r["name"]),
                ("streams ok", lambda r: f"{r['streams_ok']}/{r['streams']}"),
                ("events", lambda r: str(r["events"])),
                ("proxy CPU ms", lambda r: f"{r['cpu_ms']:.0f}" if r["name"] != "direct" else "—"),
                ("CPU µs / 1000 events", lambda r: f"{r['cpu_us_per_1000_events']:.0f}" if r["name"] != "direct" else "—"),
                ("steady CPU µs / 1000 events", lambda r: f"{r['steady_us_per_1000_events']:.0f}" if r["name"] != "direct" else "—"),
                ("sleeps / 1000 events", lambda r: f"{r['sleeps_per_1000_events']:.0f}" if r["name"] != "direct" else "—"),
                ("RSS MiB (highest round)", lambda r: f"{r['rss_mib']:.1f}" if r["name"] != "direct" else "—"),
                ("RSS by round", lambda r: " → ".join(f"{x:.1f}" for x in r["rss_by_round"])
                 if r["name"] != "direct" else "—"),
                ("RSS idle / 5 s after (highest) MiB", lambda r: f"{r['rss_idle_mib']:.1f} / {r['rss_after_max_mib']:.1f}"
                 if r["name"] != "direct" else "—"),
                ("lateness p50 µs", lambda r: str(r["lateness_us"]["p50"])),
                ("lateness p99 µs", lambda r: str(r["lateness_us"]["p99"])),
                ("added p99 µs", lambda r: str(r["lateness_us"]["p99"] - d["lateness_us"]["p99"]) if r["name"] != "direct" else "—"),
            ]))
            g = st["gate"]
            ratio = lambda k, o: g[k] / st[o][k] if st[o][k] else float("nan")
            print(f"\nRatios: CPU per event gate/nginx {ratio('cpu_us_per_1000_events', 'nginx'):.2f}, "
                  f"gate/HAProxy {ratio('cpu_us_per_1000_events', 'haproxy'):.2f}; steady gate/nginx "
                  f"{ratio('steady_us_per_1000_events', 'nginx'):.2f}, gate/HAProxy "
                  f"{ratio('steady_us_per_1000_events', 'haproxy'):.2f}"
                  + (f"; gate/gate-b CPU per event {ratio('cpu_us_per_1000_events', 'gate-b'):.2f}, steady "
                     f"{ratio('steady_us_per_1000_events', 'gate-b'):.2f}, RSS {ratio('rss_mib', 'gate-b'):.2f}"
                     if COMPARE else ""), flush=True)
        if "idle" in only:
            conns, secs_idle = (1000, 2) if args.quick else (5000, 5)
            print(f"\n## Many connections: {conns} keep-alive connections for {secs_idle} s, then closed\n", flush=True)
            rows = idle_connections(work, conns, secs_idle)
            print(table([{**v, "name": k} for k, v in rows.items()], [
                ("target", lambda r: r["name"]),
                ("RSS before MiB", lambda r: f"{r['before']:.1f}"),
                ("RSS peak MiB", lambda r: f"{r['peak']:.1f}"),
                ("RSS 5 s after the close MiB", lambda r: f"{r['after']:.1f}"),
                ("wrk socket errors", lambda r: r["errors"]),
            ]), flush=True)
        if "drain" in only:
            n, rate, longest = (20, 20, 7) if args.quick else (100, 20, 10)
            print(f"\n## Drain under load: SIGTERM with {n} streams in flight, remaining 1–{longest} s\n", flush=True)
            r = drain(work, n, rate, longest)
            print(table([r], [
                ("streams", lambda r: str(r["streams"])),
                ("completed", lambda r: str(r["completed"])),
                ("truncated", lambda r: str(r["truncated"])),
                ("last stream ended (s after SIGTERM)", lambda r: f"{r['last_stream_end_s']:.3f}"),
                ("gate exited (s after SIGTERM)", lambda r: f"{r['sigterm_to_exit_s']:.3f}"),
                ("overshoot s (past the later of the last stream and --convergence-min)",
                 lambda r: f"{r['overshoot_s']:.3f}"),
            ]))


if __name__ == "__main__":
    main()
