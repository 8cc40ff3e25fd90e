#!/usr/bin/env python3
"""Prints a Markdown table of criterion medians for the benchmark groups whose directory name
matches one of the regular expressions given as arguments.

    bench/criterion_table.py [--newer FILE] target/criterion '^read$' '^update$' ...

With --newer, results older than FILE (left by earlier runs) are skipped.

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


def main():
    args = sys.argv[1:]
    newer = 0.0
    if args[:1] == ["--newer"]:
        newer = os.path.getmtime(args[1])
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
        print(f"| {rel.replace(os.sep, ' / ')} | {fmt(point)} | {fmt(lo)} – {fmt(hi)} |")


if __name__ == "__main__":
    main()
