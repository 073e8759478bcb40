#!/usr/bin/env python3
"""Builds the dnsperf query file (and a verification sample) from the zone that meshdns dumps.

Mix, shuffled (seeded, so the same zone gives the same file):
  70 % A hits:   35 % merged `<svc>.<ns>.svc.<zone>`, 15 % per cluster `<cluster>.<svc>...`,
                 20 % per endpoint `<host>.<cluster>.<svc>...`
  10 % AAAA NODATA: the same kinds of names (no AAAA exists in the fleet)
  10 % SRV `_http._tcp.<svc>.<ns>.svc.<zone>`
  10 % NXDOMAIN: a missing service in an existing namespace, or a missing cluster label
Names are drawn uniformly from the zone (no hot set), lowercase as a resolver sends them.

    bench/gen_queries.py ZONE_FILE OUT_QUERIES [--lines N] [--verify OUT_SAMPLE --verify-per-kind K]
"""

import argparse
import random

MIX = [("merged", 35), ("cluster", 15), ("endpoint", 20), ("aaaa", 10), ("srv", 10), ("nxdomain", 10)]


def load(zone_file, zone):
    """Owner names of the fleet, by kind, from a master file written by `meshdns dump`."""
    suffix = ".svc." + zone
    merged, cluster, endpoint, srv = set(), set(), set(), set()
    for line in open(zone_file):
        parts = line.split()
        if len(parts) < 5 or line.startswith(";"):
            continue
        owner, rtype = parts[0].lower(), parts[3]
        if not owner.endswith(suffix):
            continue
        labels = owner[: -len(suffix)].split(".")
        if rtype == "SRV":
            srv.add(owner)
        elif rtype == "A":
            {2: merged, 3: cluster, 4: endpoint}.get(len(labels), set()).add(owner)
    return sorted(merged), sorted(cluster), sorted(endpoint), sorted(srv)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("zone_file")
    ap.add_argument("out")
    ap.add_argument("--zone", default="clusterset.local.")
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--verify", help="also write a sample of every kind, for answer checks")
    ap.add_argument("--verify-per-kind", type=int, default=100)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    merged, cluster, endpoint, srv = load(args.zone_file, args.zone)
    if not (merged and cluster and endpoint and srv):
        raise SystemExit(f"gen_queries: {args.zone_file} has no fleet names under .svc.{args.zone}")

    def nxdomain():
        owner = rng.choice(merged)
        svc, rest = owner.split(".", 1)
        if rng.random() < 0.5:
            return f"{svc}-canary.{rest}"  # no such service in that namespace
        return f"zeta.{owner}"  # no such cluster

    makers = {
        "merged": lambda: (rng.choice(merged), "A"),
        "cluster": lambda: (rng.choice(cluster), "A"),
        "endpoint": lambda: (rng.choice(endpoint), "A"),
        "aaaa": lambda: (rng.choice(rng.choice((merged, merged, cluster, endpoint))), "AAAA"),
        "srv": lambda: (rng.choice(srv), "SRV"),
        "nxdomain": lambda: (nxdomain(), "A"),
    }
    lines = []
    for kind, share in MIX:
        lines += [makers[kind]() for _ in range(args.lines * share // 100)]
    while len(lines) < args.lines:
        lines.append(makers["merged"]())
    rng.shuffle(lines)
    with open(args.out, "w") as f:
        f.writelines(f"{name} {qtype}\n" for name, qtype in lines)

    if args.verify:
        with open(args.verify, "w") as f:
            for kind, _ in MIX:
                for _ in range(args.verify_per_kind):
                    name, qtype = makers[kind]()
                    f.write(f"{kind} {name} {qtype}\n")


if __name__ == "__main__":
    main()
