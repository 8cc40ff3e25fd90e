#!/usr/bin/env python3
"""Prints a Markdown table of criterion medians for the benchmark groups whose directory name
matches one of the regular expressions given as arguments.

    bench/criterion_table.py [--newer FILE] [--ratios state] target/criterion '^read$' ...

With --newer, results older than FILE (left by earlier runs) are skipped. With --ratios
state, a second table follows with the ratios the state targets are about (Tx::load vs
ArcSwap::load, Tx::read vs ArcSwap::load_full, ...), computed from the same medians; rows
whose benchmarks did not run are left out.

Reads target/criterion/<group>/<bench>[/<param>]/new/estimates.json (criterion 0.5 layout).
"""
import json
import os
import re
import sys


def fmt(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


# The state targets (issue #2), as (what, numerator, denominator or None, target). Keys are
# criterion's directories "<group>/<bench>[/<param>]" ("::" is stored as "__").
R, W = "read/", "read while a writer updates/"
STATE_RATIOS = [
    ("`Tx::load` / `ArcSwap::load`, 1 thread", R + "Tx__load/1", R + "ArcSwap__load/1", "≤ 1.5×"),
    ("`Tx::load` / `ArcSwap::load`, 2 threads", R + "Tx__load/2", R + "ArcSwap__load/2", "≤ 1.5×"),
    ("`Tx::read` / `ArcSwap::load_full` (owned `Arc`), 1 thread", R + "Tx__read/1",
     R + "ArcSwap__load_full/1", "same contract: ≈ 1×"),
    ("`Tx::read` / `ArcSwap::load_full` (owned `Arc`), 2 threads", R + "Tx__read/2",
     R + "ArcSwap__load_full/2", "same contract: ≈ 1×"),
    ("tokio Mutex lock+read / `Tx::load`, 1 thread", R + "tokio Mutex lock+read/1",
     R + "Tx__load/1", "≥ 3×"),
    ("tokio Mutex lock+read / `Tx::load`, 2 threads", R + "tokio Mutex lock+read/2",
     R + "Tx__load/2", "≥ 3×"),
    ("tokio Mutex lock+read / `Tx::read`, 1 thread", R + "tokio Mutex lock+read/1",
     R + "Tx__read/1", "≥ 3×"),
    ("tokio Mutex lock+read / `Tx::read`, 2 threads", R + "tokio Mutex lock+read/2",
     R + "Tx__read/2", "≥ 3×"),
    ("`Tx::load`, busy writer / idle", W + "Tx__load, busy writer", W + "Tx__load, idle", "≤ 2×"),
    ("`Tx::read`, busy writer / idle", W + "Tx__read, busy writer", W + "Tx__read, idle", "≤ 2×"),
    ("floor, owned `Arc` (no reclamation), busy writer / idle", W + "floor owned Arc, busy writer",
     W + "floor owned Arc, idle", "no target: the ns it adds is the floor"),
    ("floor, borrowed (no reclamation), busy writer / idle", W + "floor borrowed, busy writer",
     W + "floor borrowed, idle", "no target: the ns it adds is the floor"),
    ("`Tx::load`, paced writer / idle", W + "Tx__load, paced writer", W + "Tx__load, idle",
     "≤ 2×"),
    ("`Tx::read`, paced writer / idle", W + "Tx__read, paced writer", W + "Tx__read, idle",
     "≤ 2×"),
    ("`Tx::load`, writer every 1 µs / idle", W + "Tx__load, writer every 1us",
     W + "Tx__load, idle", "≤ 2×"),
    ("`Tx::read`, writer every 1 µs / idle", W + "Tx__read, writer every 1us",
     W + "Tx__read, idle", "≤ 2×"),
    ("`Tx::update` imbl 100k, 1 thread", "update/Tx__update imbl 100k/1", None, "< 2 µs"),
    ("floor: imbl copy-on-write of the 100k map, no `Tx`, 1 thread",
     "update/floor imbl copy-on-write, no Tx/1", None, "no target: no `Tx::update` goes below it"),
    ("`Tx::update` imbl 100k / its floor, 1 thread", "update/Tx__update imbl 100k/1",
     "update/floor imbl copy-on-write, no Tx/1", "the cost `Tx` adds"),
    ("`unwedge::Mutex` / tokio's, uncontended", "mutex uncontended lock+unlock/unwedge__Mutex",
     "mutex uncontended lock+unlock/tokio__sync__Mutex", "≤ 1.5×"),
]


def print_ratios(medians, spec):
    lines = []
    for what, num, den, target in spec:
        if num not in medians or (den is not None and den not in medians):
            continue
        if den is None:
            measured = fmt(medians[num])
        else:
            measured = f"{medians[num] / medians[den]:.2f}×"
        lines.append(f"| {what} | {measured} | {target} |")
    if lines:
        print()
        print("| ratio (of the medians above) | measured | target |")
        print("| --- | ---: | --- |")
        print("\n".join(lines))


def main():
    args = sys.argv[1:]
    newer = 0.0
    ratios = None
    while args[:1] in (["--newer"], ["--ratios"]):
        if args[0] == "--newer":
            newer = os.path.getmtime(args[1])
        elif args[1] == "state":
            ratios = STATE_RATIOS
        else:
            sys.exit(f"criterion_table.py: unknown --ratios {args[1]!r} (known: state)")
        args = args[2:]
    root = args[0]
    wanted = [re.compile(p) for p in args[1:]]
    rows = []
    for dirpath, _dirs, files in os.walk(root):
        if "estimates.json" not in files or not dirpath.endswith(os.sep + "new"):
            continue
        rel = os.path.relpath(os.path.dirname(dirpath), root)
        group = rel.split(os.sep)[0]
        if wanted and not any(p.search(group) for p in wanted):
            continue
        if os.path.getmtime(os.path.join(dirpath, "estimates.json")) < newer:
            continue
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        med = est["median"]
        rows.append((rel, med["point_estimate"], med["confidence_interval"]["lower_bound"],
                     med["confidence_interval"]["upper_bound"]))
    rows.sort()
    print("| benchmark | median | 95 % CI of the median |")
    print("| --- | ---: | --- |")
    for rel, point, lo, hi in rows:
        # Criterion stores "::" as "__" in directory names; show the names as written.
        name = rel.replace(os.sep, " / ").replace("__", "::")
        print(f"| {name} | {fmt(point)} | {fmt(lo)} – {fmt(hi)} |")
    if ratios:
        print_ratios({rel.replace(os.sep, "/"): point for rel, point, _, _ in rows}, ratios)


if __name__ == "__main__":
    main()
