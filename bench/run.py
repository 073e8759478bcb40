#!/usr/bin/env python3
"""The driver behind scripts/bench: query throughput of meshdns, Knot DNS and NSD on the same
records, then propagation latency idle and under load (benches/kube_sync.rs).

scripts/bench installs the packages and builds meshdns and bench/nullserver.c, then runs this
with the standard library only. Everything it writes goes under target/bench/:
  fleet/            the generated fleet (file sources + meshdns.yaml)
  clusterset.local.zone   `meshdns dump` of it: what Knot DNS and NSD serve
  queries.txt       the dnsperf query mix; verify.txt the sample whose answers are compared
  knot/ nsd/ meshdns/ null/   configs and logs of each server
  results-<time>.json, latest.json   every run's raw figures, the medians and the machine

Method, in short (BENCHMARKS.md says it at length):
- every server is started once, pinned to core 0 (`taskset -c 0`), and warmed with one short
  dnsperf run; dnsperf is pinned to core 1;
- REPS repetitions, interleaved: null, meshdns, knot, nsd, null, meshdns, ... each SECONDS
  long, saturating (`-c 2 -q 100 -T 2 -t 1`, EDNS on);
- busy share = (utime+stime of the server's processes over the run) / dnsperf's run time;
  qps per busy core = queries completed / server CPU seconds;
- noise: the CPU time of every other process (/proc/*/stat, reaped children included) over
  each run; above NOISE (5 %) of one core, or with as much steal (/proc/stat), the run is
  noisy and is repeated (up to RETRIES times); every run first waits for a quiet machine;
  waits and repeats stop when NOISE_BUDGET seconds have gone to them;
- latency: dnsperf's average at saturation; p50/p99 from a second set of runs at half of
  meshdns's median maximum rate (`-Q`), every query's latency taken from `dnsperf -v`.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "target", "bench")
CLK = os.sysconf("SC_CLK_TCK")
SERVER_CORE, LOAD_CORE = "0", "1"
ZONE = "clusterset.local."


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def env_num(key, default, kind=float):
    v = os.environ.get(key)
    return kind(v) if v not in (None, "") else default


# ---------------------------------------------------------------- /proc accounting

def proc_cpu(pid):
    """utime+stime of a process (all its threads), in seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def all_procs():
    """{pid: (ppid, comm)} of every process."""
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            comm = s[s.index("(") + 1: s.rindex(")")]
            procs[int(d)] = (int(s.rsplit(")", 1)[1].split()[1]), comm)
        except (OSError, ValueError, IndexError):
            pass
    return procs


def descendants(root):
    procs = all_procs()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in procs:
            out.append(p)
            todo += [c for c, (pp, _) in procs.items() if pp == p]
    return out


def ksoftirqd_pids():
    return [p for p, (_, comm) in all_procs().items() if comm.startswith("ksoftirqd/")]


def proc_table():
    """{pid: (own CPU seconds, reaped children's CPU seconds)} of every process."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            table[int(d)] = ((int(fields[11]) + int(fields[12])) / CLK,
                             (int(fields[13]) + int(fields[14])) / CLK)
        except (OSError, IndexError, ValueError):
            pass
    return table


def others_cpu(t0, t1, exclude):
    """CPU seconds that processes outside `exclude` used between two proc_table() samples.
    A process that exits in between is counted through its parent's reaped-children time
    (cutime+cstime), less what it had used before the first sample; one that starts and ends
    in between, through its parent alone."""
    total = 0.0
    for pid, (own1, ch1) in t1.items():
        if pid in exclude:
            continue
        own0, ch0 = t0.get(pid, (0.0, 0.0))
        total += (own1 - own0) + (ch1 - ch0)
    for pid, (own0, ch0) in t0.items():
        if pid not in t1 and pid not in exclude:
            total -= own0 + ch0
    return total


def cpu_stat():
    """/proc/stat in seconds, per core ("cpu0", "cpu1", ...), with the time it was read. Busy
    time is derived from idle+iowait (accounted exactly on a tickless kernel) rather than from
    the busy columns (sampled at each tick, which misses short bursts of a lightly loaded
    server): see cpu_busy()."""
    t = time.monotonic()
    cores = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *v = line.split()
            v = [int(x) for x in v] + [0] * 8
            cores[name] = {"idle": (v[3] + v[4]) / CLK, "softirq": v[6] / CLK, "steal": v[7] / CLK}
    return {"t": t, "cores": cores}


def cpu_busy(s0, s1, core=None):
    """CPU seconds a core (or all of them) was busy between two cpu_stat() samples."""
    wall = s1["t"] - s0["t"]
    names = [f"cpu{core}"] if core is not None else list(s1["cores"])
    return sum(wall - (s1["cores"][n]["idle"] - s0["cores"][n]["idle"])
               - (s1["cores"][n]["steal"] - s0["cores"][n]["steal"]) for n in names)


def cpu_delta(s0, s1, field):
    return sum(s1["cores"][n][field] - s0["cores"][n][field] for n in s1["cores"])


# ---------------------------------------------------------------- a minimal DNS client

def dns_query(port, name, qtype=1, timeout=0.5):
    """(rcode, aa, ancount) of one UDP query to 127.0.0.1:port, or None."""
    qid = random.randrange(65536)
    wire = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        wire += bytes([len(label)]) + label.encode()
    wire += b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(wire, ("127.0.0.1", port))
            resp = s.recv(65535)
        except OSError:
            return None
    if len(resp) < 12 or struct.unpack(">H", resp[:2])[0] != qid:
        return None
    flags, _, ancount = struct.unpack(">HHH", resp[2:8])
    return flags & 0xF, bool(flags & 0x0400), ancount


def free_port():
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                    return port
                except OSError:
                    continue
    raise SystemExit("bench: no free port")


# ---------------------------------------------------------------- servers

class Server:
    """One DNS server process (and its children), pinned to the server core."""

    def __init__(self, name, argv, port, workdir, probe, ready_url=None):
        self.name, self.argv, self.port, self.workdir = name, argv, port, workdir
        self.probe, self.ready_url = probe, ready_url
        self.proc, self.pids = None, []

    def start(self, timeout=120):
        os.makedirs(self.workdir, exist_ok=True)
        self.logf = open(os.path.join(self.workdir, "server.log"), "w")
        self.proc = subprocess.Popen(["taskset", "-c", SERVER_CORE] + self.argv, cwd=self.workdir,
                                     stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: {self.name} exited with {self.proc.returncode}; "
                                 f"see {self.workdir}/server.log")
            if self.ready():
                self.pids = descendants(self.proc.pid)
                return time.monotonic() - t0
            time.sleep(0.1)
        raise SystemExit(f"bench: {self.name} not answering after {timeout}s; see {self.workdir}/server.log")

    def ready(self):
        if self.ready_url:
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1) as r:
                    if r.status != 200:
                        return False
            except OSError:
                return False
        r = dns_query(self.port, self.probe)
        return r is not None and (self.name == "null" or (r[0] == 0 and r[1] and r[2] > 0))

    def cpu(self):
        return sum(proc_cpu(p) for p in self.pids)

    def rss_mib(self):
        total = 0
        for p in self.pids:
            try:
                with open(f"/proc/{p}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop(self):
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # children (NSD's server and xfrd) go with their parent; make sure, by PID
        deadline = time.monotonic() + 5
        for p in self.pids:
            while os.path.exists(f"/proc/{p}") and time.monotonic() < deadline:
                time.sleep(0.05)
            if os.path.exists(f"/proc/{p}"):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        self.logf.close()


def render(template, out, **subs):
    text = open(os.path.join(ROOT, "bench", template)).read()
    for k, v in subs.items():
        text = text.replace(f"@{k}@", str(v))
    with open(out, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- dnsperf

DNSPERF_SUMMARY = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "runtime": r"Run time \(s\):\s+([\d.]+)",
    "avg_latency": r"Average Latency \(s\):\s+([\d.]+)",
    "max_latency": r"Average Latency \(s\):.*max ([\d.]+)",
    "latency_stddev": r"Latency StdDev \(s\):\s+([\d.]+)",
    "request_bytes": r"Average packet size:\s+request (\d+)",
    "response_bytes": r"Average packet size:.*response (\d+)",
}


class Bench:
    def __init__(self, args):
        self.args = args
        self.servers = {}
        self.runs = []
        self.ksoftirqd = ksoftirqd_pids()
        self.dnsperf_base = os.environ.get("BENCH_DNSPERF_ARGS", "-c 2 -q 100 -T 2").split()
        self.noise = env_num("BENCH_NOISE", 0.05)
        self.retries = int(env_num("BENCH_RETRIES", 3))
        self.quiet_wait = env_num("BENCH_QUIET_WAIT", 5.0 if args.quick else 20.0)
        self.noisy_repeats = 0
        # Time spent on noise (quiet waits, discarded runs) is bounded: past the budget, runs
        # are taken as they come (and flagged) so that a busy machine cannot stretch the
        # benchmark without end.
        self.noise_budget = env_num("BENCH_NOISE_BUDGET", 60.0 if args.quick else 300.0)
        self.noise_spent = 0.0

    def ours_cpu(self):
        return sum(s.cpu() for s in self.servers.values())

    def ksoft_cpu(self):
        return sum(proc_cpu(p) for p in self.ksoftirqd)

    def exclude(self):
        """Our processes: the servers (with their children), this driver (whose reaped
        children are dnsperf and dig) and ksoftirqd (network work of the load itself)."""
        pids = {os.getpid()} | set(self.ksoftirqd)
        for s in self.servers.values():
            pids |= set(s.pids)
        return pids

    def wait_quiet(self):
        """Waits (up to quiet_wait s) for a 0.5 s window where others use < noise of a core."""
        t0 = time.monotonic()
        told = False
        exclude = self.exclude()
        while self.noise_spent + (time.monotonic() - t0) < self.noise_budget:
            p0, w0 = proc_table(), time.monotonic()
            time.sleep(0.5)
            p1, wall = proc_table(), time.monotonic() - w0
            others = others_cpu(p0, p1, exclude)
            if others <= self.noise * wall:
                return time.monotonic() - t0
            if time.monotonic() - t0 > self.quiet_wait:
                if told:
                    log(f"   machine still busy after {self.quiet_wait:.0f}s (others {others / wall:.0%} "
                        "of a core): running anyway")
                return time.monotonic() - t0
            if not told:
                log(f"   waiting for a quiet machine (others use {others / wall:.0%} of a core)…")
                told = True
        return time.monotonic() - t0

    def dnsperf(self, server, seconds, qps=None, verbose=None):
        """One dnsperf run against `server`, with CPU accounting. Returns a dict of figures."""
        argv = ["taskset", "-c", LOAD_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(server.port),
                "-d", os.path.join(OUT, "queries.txt"), "-l", str(seconds), "-t", "1"] + self.dnsperf_base
        if self.args.edns:
            argv.append("-e")
        if qps:
            argv += ["-Q", str(int(qps))]
        if verbose:
            argv.append("-v")
        out_path = verbose or os.path.join(OUT, "dnsperf.out")
        with open(out_path, "w") as out, open(os.path.join(OUT, "dnsperf.err"), "w") as err:
            exclude = self.exclude()
            srv0, ours0, k0 = server.cpu(), self.ours_cpu(), self.ksoft_cpu()
            p0, s0 = proc_table(), cpu_stat()
            p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            _, status, ru = os.wait4(p.pid, 0)
            s1, p1 = cpu_stat(), proc_table()
            srv1, ours1, k1 = server.cpu(), self.ours_cpu(), self.ksoft_cpu()
        p.returncode = os.waitstatus_to_exitcode(status)
        text = open(out_path).read() + open(os.path.join(OUT, "dnsperf.err")).read()
        if p.returncode != 0:
            raise SystemExit(f"bench: dnsperf failed ({p.returncode}): {' '.join(argv)}\n{text[-2000:]}")
        r = {"server": server.name, "seconds": seconds, "target_qps": qps}
        for k, rx in DNSPERF_SUMMARY.items():
            m = re.search(rx, text)
            r[k] = float(m.group(1)) if m else None
        m = re.search(r"Response codes:\s+(.*)", text)
        r["rcodes"] = m.group(1).strip() if m else ""
        wall = s1["t"] - s0["t"]
        # dnsperf's own run time: from its first query to the end of -l. It leaves out its
        # start (reading the query file) and its wait for the last answers (up to -t), when
        # the server idles; the server's busy share is taken over it.
        run_time = r["runtime"] or wall
        dnsperf_cpu = ru.ru_utime + ru.ru_stime
        server_cpu = srv1 - srv0
        # Noise: the CPU time of every other process. Also kept, for the record: busy time of
        # each core that no process accounts for (interrupts while the core idles: the wake-ups
        # of a server or a dnsperf that is not saturated; 3-9 % of a core at half rate).
        others = others_cpu(p0, p1, exclude)
        unattributed_server_core = cpu_busy(s0, s1, SERVER_CORE) - (ours1 - ours0)
        unattributed_load_core = cpu_busy(s0, s1, LOAD_CORE) - dnsperf_cpu
        r.update({
            "wall": wall,
            "server_cpu": server_cpu,
            "busy_share": server_cpu / run_time,
            "qps_per_busy_core": (r["completed"] or 0) / server_cpu if server_cpu > 0 else None,
            "dnsperf_cpu_share": dnsperf_cpu / run_time,
            "ksoftirqd_share": (k1 - k0) / wall,
            "softirq_share": cpu_delta(s0, s1, "softirq") / wall,
            "others_share": others / wall,
            "unattributed_server_core": unattributed_server_core / wall,
            "unattributed_load_core": unattributed_load_core / wall,
            "steal_share": cpu_delta(s0, s1, "steal") / wall,
        })
        r["noisy"] = r["others_share"] > self.noise or r["steal_share"] > self.noise
        if verbose:
            r.update(latency_percentiles(verbose))
            if not self.args.keep_verbose:
                os.remove(verbose)
        return r

    def measured(self, phase, rep, server, seconds, qps=None):
        """A run repeated while noisy (up to `retries` more times); every attempt is kept."""
        for attempt in range(1, self.retries + 2):
            waited = self.wait_quiet()
            self.noise_spent += waited
            verbose = os.path.join(OUT, f"latency-{server.name}.txt") if phase == "half" else None
            r = self.dnsperf(server, seconds, qps, verbose)
            r.update({"phase": phase, "rep": rep, "attempt": attempt, "waited_for_quiet": waited})
            last = attempt == self.retries + 1 or self.noise_spent >= self.noise_budget
            if r["noisy"] and not last:
                self.noise_spent += r["wall"]
            r["accepted"] = not r["noisy"] or last
            self.runs.append(r)
            desc = (f"{phase:5} rep {rep} {server.name:8} {r['qps']:>10,.0f} qps  busy {r['busy_share']:5.1%}  "
                    f"others {r['others_share']:5.1%}")
            if r.get("p99") is not None:
                desc += f"  p99 {r['p99'] * 1e3:.3f} ms"
            if r["noisy"]:
                self.noisy_repeats += 0 if last else 1
                log(f"   {desc}  NOISY ({'kept: out of retries or noise budget' if last else 'repeating'})")
            else:
                log(f"   {desc}")
            if r["accepted"]:
                return r


def latency_percentiles(path):
    lat = []
    timeouts = 0
    with open(path) as f:
        for line in f:
            if not line.startswith("> "):
                continue
            parts = line.split()
            if parts[1] == "T":
                timeouts += 1
                continue
            try:
                lat.append(float(parts[-1]))
            except ValueError:
                pass
    lat.sort()
    if not lat:
        return {"samples": 0, "timeouts": timeouts}

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))]

    return {"samples": len(lat), "timeouts": timeouts, "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
            "p999": pct(0.999), "max": lat[-1], "mean": sum(lat) / len(lat)}


# ---------------------------------------------------------------- answer check

def dig_batch(port, sample):
    """Runs dig -f over the sample; returns one normalized answer per query."""
    batch = os.path.join(OUT, "verify.dig")
    with open(batch, "w") as f:
        f.writelines(f"{name} {qtype}\n" for _, name, qtype in sample)
    # +ignore: the UDP answer as it is (dig would otherwise retry a truncated one over TCP)
    out = subprocess.run(["dig", "-p", str(port), "@127.0.0.1", "+tries=2", "+time=2", "+norec",
                          "+nocookie", "+ignore", "+noall", "+comments", "+answer", "+authority", "+additional",
                          "-f", batch], capture_output=True, text=True, check=True).stdout
    blocks, cur = [], None
    for line in out.splitlines():
        if "->>HEADER<<-" in line:
            cur = {"rcode": re.search(r"status: (\w+)", line).group(1), "flags": "", "sec": None,
                   "answer": [], "authority": [], "additional": []}
            blocks.append(cur)
        elif cur is None:
            continue
        elif line.startswith(";; flags:"):
            cur["flags"] = " ".join(sorted(f for f in line[9:].split(";")[0].split() if f in ("aa", "tc")))
        elif line.startswith(";; ANSWER SECTION"):
            cur["sec"] = "answer"
        elif line.startswith(";; AUTHORITY SECTION"):
            cur["sec"] = "authority"
        elif line.startswith(";; ADDITIONAL SECTION"):
            cur["sec"] = "additional"
        elif line and not line.startswith(";") and cur["sec"]:
            f = line.split()
            owner, rtype, rdata = f[0].lower(), f[3], [x.lower() for x in f[4:]]
            if rtype == "SOA":
                rdata[2] = "<serial>"  # meshdns's live serial is not the dump's
            cur[cur["sec"]].append(" ".join([owner, rtype] + rdata))
    for b in blocks:
        for s in ("answer", "authority", "additional"):
            b[s] = sorted(b[s])
        del b["sec"]
    if len(blocks) != len(sample):
        raise SystemExit(f"bench: dig returned {len(blocks)} answers for {len(sample)} questions (port {port})")
    return blocks


def describe(answer):
    """A short description of a normalized answer (or of an additional section alone)."""
    if isinstance(answer, list):
        return f"{len(answer)} additional records"
    flags = answer["flags"].upper() or "no flags"
    return (f"{answer['rcode']} {flags}, {len(answer['answer'])} answer / {len(answer['authority'])} authority / "
            f"{len(answer['additional'])} additional records")


def verify(servers):
    sample = [line.split() for line in open(os.path.join(OUT, "verify.txt"))]
    answers = {name: dig_batch(s.port, sample) for name, s in servers.items()}
    report = {"questions": len(sample), "pairs": {}}
    for other in ("knot", "nsd"):
        same = diff_add = 0
        diffs = []
        for (kind, name, qtype), a, b in zip(sample, answers["meshdns"], answers[other]):
            core_a = {k: a[k] for k in ("rcode", "flags", "answer", "authority")}
            core_b = {k: b[k] for k in ("rcode", "flags", "answer", "authority")}
            if core_a != core_b:
                diffs.append({"kind": kind, "question": f"{name} {qtype}", "meshdns": a, other: b})
            elif a["additional"] != b["additional"]:
                diff_add += 1
                if len([d for d in diffs if d.get("additional_only")]) < 3:
                    diffs.append({"kind": kind, "question": f"{name} {qtype}", "additional_only": True,
                                  "meshdns": a["additional"], other: b["additional"]})
            else:
                same += 1
        report["pairs"][other] = {"identical": same, "additional_differs": diff_add,
                                  "differs": len(sample) - same - diff_add, "examples": diffs[:10]}
    by_kind = {}
    for (kind, _, _), a in zip(sample, answers["meshdns"]):
        by_kind.setdefault(kind, set()).add(a["rcode"] + ("" if a["answer"] else " (empty)"))
    report["meshdns_rcodes_by_kind"] = {k: sorted(v) for k, v in by_kind.items()}
    report["truncated"] = {n: {kind: sum(1 for (k, _, _), a in zip(sample, ans) if k == kind and "tc" in a["flags"])
                               for kind, _, _ in sample} for n, ans in answers.items()}
    return report


# ---------------------------------------------------------------- report

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec, scale=1.0, none="–"):
    return none if x is None else format(x * scale, spec)


def machine_info(meshdns_bin):
    def first(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()
        except OSError:
            return []

    model = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mhz = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")), "")
    git = first(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    return {
        "nproc": os.cpu_count(), "cpu_model": model, "cpu_mhz": mhz, "kernel": platform.release(),
        "os": next((line.split("=", 1)[1].strip().strip('"') for line in open("/etc/os-release")
                    if line.startswith("PRETTY_NAME=")), ""),
        "knot": (first(["knotd", "--version"]) or [""])[0],
        "nsd": (first(["nsd", "-v"]) or [""])[0],
        "dnsperf": next((x for x in first(["dnsperf", "-h"]) if x.startswith("Version")), ""),
        "rustc": (first(["rustc", "--version"]) or [""])[0],
        "meshdns": (first([meshdns_bin, "--version"]) or [""])[0],
        "git": git[0] if git else "",
        "loadavg": open("/proc/loadavg").read().strip(),
    }


def summary_table(bench, half_rate):
    rows = []
    out = ["| server | qps | server busy share | qps per busy core | response bytes | avg latency at max rate "
           f"| latency at {half_rate:,.0f} qps: p50 / p99 / p99.9 | runs (noisy repeats) |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name in ("meshdns", "knot", "nsd", "null"):
        sat = [r for r in bench.runs if r["server"] == name and r["phase"] == "max" and r["accepted"]]
        half = [r for r in bench.runs if r["server"] == name and r["phase"] == "half" and r["accepted"]]
        if not sat:
            continue
        noisy = sum(1 for r in bench.runs if r["server"] == name and not r["accepted"])
        still = sum(1 for r in sat + half if r["noisy"])
        m = {
            "server": name, "qps": med(r["qps"] for r in sat), "busy_share": med(r["busy_share"] for r in sat),
            "qps_per_busy_core": med(r["qps_per_busy_core"] for r in sat),
            "response_bytes": med(r["response_bytes"] for r in sat),
            "avg_latency": med(r["avg_latency"] for r in sat),
            "half_qps": med(r["qps"] for r in half), "p50": med(r.get("p50") for r in half),
            "p99": med(r.get("p99") for r in half), "p999": med(r.get("p999") for r in half),
            "runs": len(sat) + len(half), "noisy_repeats": noisy, "noisy_kept": still,
        }
        rows.append(m)
        label = "null (dnsperf ceiling)" if name == "null" else {"knot": "Knot DNS", "nsd": "NSD"}.get(name, name)
        runs = f"{m['runs']} ({noisy}{', ' + str(still) + ' kept noisy' if still else ''})"
        out.append(f"| {label} | {fmt(m['qps'], ',.0f')} | {fmt(m['busy_share'], '.1%')} | "
                   f"{fmt(m['qps_per_busy_core'], ',.0f')} | {fmt(m['response_bytes'], '.0f')} | "
                   f"{fmt(m['avg_latency'], '.3f', 1e3)} ms | {fmt(m['p50'], '.3f', 1e3)} / "
                   f"{fmt(m['p99'], '.3f', 1e3)} / {fmt(m['p999'], '.3f', 1e3)} ms | {runs} |")
    return out, rows


def raw_table(runs):
    out = ["| phase | rep | try | server | qps | completed | lost | busy | qps/busy core | dnsperf CPU | softirq "
           "| others | unattributed (server / load core) | steal | avg lat ms | p99 ms | noisy | kept |",
           "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in runs:
        out.append(
            f"| {r['phase']} | {r['rep']} | {r['attempt']} | {r['server']} | {fmt(r['qps'], ',.0f')} | "
            f"{fmt(r['completed'], ',.0f')} | {fmt(r['lost'], ',.0f')} | {fmt(r['busy_share'], '.1%')} | "
            f"{fmt(r['qps_per_busy_core'], ',.0f')} | {fmt(r['dnsperf_cpu_share'], '.0%')} | "
            f"{fmt(r['softirq_share'], '.0%')} | {fmt(r['others_share'], '.1%')} | {fmt(r['unattributed_server_core'], '.0%')} / "
            f"{fmt(r['unattributed_load_core'], '.0%')} | {fmt(r['steal_share'], '.1%')} | "
            f"{fmt(r['avg_latency'], '.3f', 1e3)} | {fmt(r.get('p99'), '.3f', 1e3)} | "
            f"{'yes' if r['noisy'] else ''} | {'yes' if r['accepted'] else 'no'} |")
    return out


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 s runs, 1 repetition (smoke test)")
    ap.add_argument("--no-edns", dest="edns", action="store_false", help="dnsperf without -e")
    ap.add_argument("--skip-propagation", action="store_true", help="only the throughput part")
    ap.add_argument("--skip-throughput", action="store_true", help="only the propagation part")
    ap.add_argument("--keep-verbose", action="store_true", help="keep dnsperf -v latency files")
    ap.add_argument("--meshdns", default=os.path.join(ROOT, "target", "release", "meshdns"))
    args = ap.parse_args()
    seconds = int(env_num("BENCH_SECONDS", 2 if args.quick else 10))
    reps = int(env_num("BENCH_REPS", 1 if args.quick else 3))
    half_seconds = int(env_num("BENCH_HALF_SECONDS", max(2, seconds // 2)))
    started = time.time()
    os.makedirs(OUT, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")

    # A private copy: a rebuild during the run (someone else's cargo) does not swap the binary.
    os.makedirs(os.path.join(OUT, "bin"), exist_ok=True)
    meshdns_bin = os.path.join(OUT, "bin", "meshdns")
    shutil.copy2(args.meshdns, meshdns_bin)
    info = machine_info(meshdns_bin)
    result = {"started": stamp, "machine": info, "quick": args.quick, "seconds": seconds, "reps": reps,
              "half_seconds": half_seconds, "edns": args.edns}
    print(f"# meshdns benchmark {stamp}{' (--quick smoke run)' if args.quick else ''}\n")
    print(f"machine: {info['nproc']} cores, {info['cpu_model']} ({info['cpu_mhz']} MHz), Linux {info['kernel']}, "
          f"{info['os']}; load average at start {info['loadavg'].split()[0:3]}")
    print(f"versions: {info['meshdns']} ({info['git']}), {info['knot']}, {info['nsd']}, dnsperf {info['dnsperf']}, "
          f"{info['rustc']}\n")

    bench = Bench(args)
    if not args.skip_throughput:
        throughput(args, bench, result, meshdns_bin, seconds, reps, half_seconds)
    if not args.skip_propagation:
        propagation(args, result)
    result["total_seconds"] = time.time() - started
    for path in (os.path.join(OUT, f"results-{stamp}.json"), os.path.join(OUT, "latest.json")):
        with open(path, "w") as f:
            json.dump(result, f, indent=1, default=str)
    print(f"\nraw results: target/bench/results-{stamp}.json (also latest.json); "
          f"total time {result['total_seconds'] / 60:.1f} min")


def throughput(args, bench, result, meshdns_bin, seconds, reps, half_seconds):
    log("== generating the fleet, the zone and the query mix")
    fleet = os.path.join(OUT, "fleet")
    ports = {n: free_port() for n in ("meshdns", "ops", "knot", "nsd", "null")}
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gen_fleet.py"), fleet,
                    "--dns-port", str(ports["meshdns"]), "--ops-port", str(ports["ops"])], check=True)
    config = os.path.join(fleet, "meshdns.yaml")
    subprocess.run([meshdns_bin, "check", "--config", config], check=True, stdout=subprocess.DEVNULL)
    zonefile = os.path.join(OUT, "clusterset.local.zone")
    with open(zonefile, "w") as f:
        subprocess.run([meshdns_bin, "dump", "--config", config], check=True, stdout=f,
                       stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="error"))
    records = sum(1 for _ in open(zonefile))
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gen_queries.py"), zonefile,
                    os.path.join(OUT, "queries.txt"), "--verify", os.path.join(OUT, "verify.txt")], check=True)
    probe = next(line.split()[0] for line in open(zonefile) if ".svc." in line)
    result["zone_records"] = records

    for name in ("knot", "nsd"):
        os.makedirs(os.path.join(OUT, name), exist_ok=True)
    render("knot.conf.in", os.path.join(OUT, "knot", "knot.conf"), DIR=os.path.join(OUT, "knot"),
           PORT=ports["knot"], ZONEFILE=zonefile)
    render("nsd.conf.in", os.path.join(OUT, "nsd", "nsd.conf"), DIR=os.path.join(OUT, "nsd"),
           PORT=ports["nsd"], ZONEFILE=zonefile)
    null_bin = os.path.join(OUT, "nullserver")
    bench.servers = {
        "meshdns": Server("meshdns", [meshdns_bin, "serve", "--config", config], ports["meshdns"],
                          os.path.join(OUT, "meshdns"), probe, f"http://127.0.0.1:{ports['ops']}/readyz"),
        "knot": Server("knot", ["knotd", "-c", os.path.join(OUT, "knot", "knot.conf")], ports["knot"],
                       os.path.join(OUT, "knot"), probe),
        "nsd": Server("nsd", ["nsd", "-d", "-c", os.path.join(OUT, "nsd", "nsd.conf")], ports["nsd"],
                      os.path.join(OUT, "nsd"), probe),
        "null": Server("null", [null_bin, "127.0.0.1", str(ports["null"])], ports["null"],
                       os.path.join(OUT, "null"), probe),
    }
    os.environ["RUST_LOG"] = "warn"
    print(f"fleet: 5 clusters x 2,000 services (5,000 distinct, 2 clusters x 5 endpoints each); zone "
          f"{records:,} records; queries: 100,000 lines (70 % A hits, 10 % AAAA NODATA, 10 % SRV, "
          f"10 % NXDOMAIN), dnsperf {' '.join(bench.dnsperf_base)}{' -e' if args.edns else ''}\n")
    try:
        log("== starting the servers (each pinned to core 0)")
        for s in bench.servers.values():
            t = s.start()
            log(f"   {s.name:8} port {s.port}, answering after {t:.1f}s, RSS {s.rss_mib():.0f} MiB")
        result["rss_mib"] = {n: s.rss_mib() for n, s in bench.servers.items()}

        log("== checking that meshdns, Knot DNS and NSD give the same answers")
        check = verify({n: bench.servers[n] for n in ("meshdns", "knot", "nsd")})
        result["answer_check"] = check
        print("## Same records, same answers?\n")
        for other, label in (("knot", "Knot DNS"), ("nsd", "NSD")):
            p = check["pairs"][other]
            print(f"- meshdns vs {label}: {p['identical']} of {check['questions']} sampled questions identical "
                  f"(rcode, AA/TC, answer and authority RRsets; order, TTL and SOA serial ignored), "
                  f"{p['additional_differs']} differ only in the additional section, {p['differs']} differ.")
            for ex in p["examples"][:4]:
                print(f"  - {ex['kind']} `{ex['question']}`: meshdns {describe(ex['meshdns'])}; "
                      f"{label} {describe(ex[other])}")
        print("- truncated (TC=1) UDP answers to the sample, by kind: " + "; ".join(
            f"{n} {sum(v.values())}" + (" (" + ", ".join(f"{k} {c}" for k, c in v.items() if c) + ")" if sum(v.values()) else "")
            for n, v in check["truncated"].items()))
        print(f"- meshdns rcodes by kind of question: "
              + "; ".join(f"{k}: {', '.join(v)}" for k, v in check["meshdns_rcodes_by_kind"].items()))
        print()

        log("== warm-up (1 s each, not measured)")
        for s in bench.servers.values():
            bench.dnsperf(s, 1)

        order = ["null", "meshdns", "knot", "nsd"]
        log(f"== maximum rate: {reps} x {order}, {seconds}s each")
        for rep in range(1, reps + 1):
            for name in order:
                bench.measured("max", rep, bench.servers[name], seconds)
        mesh_max = med(r["qps"] for r in bench.runs if r["server"] == "meshdns" and r["accepted"])
        half_rate = int(mesh_max / 2)
        log(f"== latency at half of meshdns's maximum ({half_rate:,} qps): {reps} x {order}, {half_seconds}s each")
        for rep in range(1, reps + 1):
            for name in order:
                bench.measured("half", rep, bench.servers[name], half_seconds, qps=half_rate)
        result["rss_mib_after"] = {n: s.rss_mib() for n, s in bench.servers.items()}
    finally:
        for s in bench.servers.values():
            s.stop()

    table, rows = summary_table(bench, half_rate)
    result.update({"summary": rows, "runs": bench.runs, "half_rate": half_rate,
                   "noisy_repeats": bench.noisy_repeats})
    print(f"## Query throughput (medians of {reps} run{'s' if reps > 1 else ''}, {seconds}s each; "
          f"latency runs {half_seconds}s at {half_rate:,} qps)\n")
    print("\n".join(table))
    mesh = next((r for r in rows if r["server"] == "meshdns"), None)
    knot = next((r for r in rows if r["server"] == "knot"), None)
    null = next((r for r in rows if r["server"] == "null"), None)
    print()
    if mesh and knot and knot["qps"] and knot["qps_per_busy_core"]:
        print(f"- meshdns / Knot DNS: {mesh['qps'] / knot['qps']:.2f}x in qps, "
              f"{mesh['qps_per_busy_core'] / knot['qps_per_busy_core']:.2f}x per busy core "
              f"(target: >= 1 on both)")
    if mesh and mesh["p99"] is not None:
        print(f"- meshdns p99 at half its maximum rate: {mesh['p99'] * 1e3:.3f} ms (target: < 1 ms)")
    if null and mesh:
        print(f"- dnsperf's ceiling (null server) is {null['qps']:,.0f} qps: a server near it is limited by "
              f"the load generator, not by itself; compare per busy core")
    noisy_kept = sum(1 for r in bench.runs if r["accepted"] and r["noisy"])
    print(f"- noise: {bench.noisy_repeats} run(s) repeated because other processes used > "
          f"{bench.noise:.0%} of a core{f'; {noisy_kept} kept noisy (after {bench.retries} retries, or past the noise budget)' if noisy_kept else ''}; "
          f"{bench.noise_spent:.0f} s of {bench.noise_budget:.0f} s noise budget spent waiting for quiet and on discarded runs")
    print(f"- RSS after the runs (MiB): " + ", ".join(f"{n} {v:.0f}" for n, v in result["rss_mib_after"].items()))
    print("\n### Every run\n")
    print("\n".join(raw_table(bench.runs)))


def propagation(args, result):
    print("\n## Propagation (benches/kube_sync.rs: fake API servers; idle, then under dnsperf load)\n")
    env = dict(os.environ, MESHDNS_BENCH_LOAD="dnsperf")
    env.pop("RUST_LOG", None)
    if args.quick:
        env.setdefault("MESHDNS_BENCH_SERVICES", "2000")
    log("== cargo bench --bench kube_sync (MESHDNS_BENCH_LOAD=dnsperf)")
    build = subprocess.run(["cargo", "bench", "--locked", "--bench", "kube_sync", "--no-run"], cwd=ROOT,
                           env=env, stdout=subprocess.DEVNULL)
    if build.returncode != 0:
        print(f"kube_sync did not build (exit {build.returncode})")
        result["propagation"] = {"error": build.returncode}
        return
    # The bench's processes (cargo, the bench, meshdns, dnsperf) all start and end inside the
    # window and are reaped by their parents, so their time shows up only in this driver's
    # children time, which is excluded: what remains is other processes'.
    p0, t0 = proc_table(), time.monotonic()
    p = subprocess.Popen(["cargo", "bench", "--locked", "--bench", "kube_sync"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    p1, wall = proc_table(), time.monotonic() - t0
    others = others_cpu(p0, p1, {os.getpid()}) / wall
    result["propagation"] = {"output": out, "stderr_tail": err[-4000:], "exit": p.returncode,
                             "services": env.get("MESHDNS_BENCH_SERVICES", "10000"),
                             "changes": env.get("MESHDNS_BENCH_CHANGES", "500"),
                             "seconds": wall, "others_share": others}
    if p.returncode != 0:
        print(f"kube_sync failed (exit {p.returncode}); the end of its stderr:\n\n```\n{err[-3000:]}\n```")
        return
    print("\n".join(line for line in out.splitlines() if line.startswith("|")))
    unseen = [line for line in err.splitlines() if "not seen after" in line]
    print()
    for line in unseen[:5]:
        print(f"- {line}")
    print(f"- other processes used {others:.0%} of a core during these {wall:.0f} s"
          f"{' (noisy: more than ' + format(args_noise(), '.0%') + ')' if others > args_noise() else ''}")


def args_noise():
    return env_num("BENCH_NOISE", 0.05)


if __name__ == "__main__":
    main()
