"""``bench/run [--quick] [--repeats N] [--profile] [--no-readme] [name ...]``: run benchmarks, print one table.

Names: full_snapshot, memory, copy, secondary_lag, delta_ingest, restore, history, pitr, startup
(default: all, in that order). The table and the plots go to ``bench/README.md`` / ``bench/results/`` unless
``--no-readme`` (``--quick`` never writes the README: its sizes are not the issue's).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

from bench.common import Ctx, Row, load_average, log, save_raw, dump_rows

ORDER = ["full_snapshot", "memory", "copy", "secondary_lag", "delta_ingest", "restore", "history", "pitr", "startup"]


def table(rows: list[Row]) -> str:
    head = ["name", "ours", "peer, same run", "ratio", "target", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r.name} | {r.ours} | {r.peer} | {r.ratio} | {r.target} | {r.verdict} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(ORDER)}")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not the issue's figures")
    p.add_argument("--repeats", type=int, default=None, help="runs of each side (default 3, quick 1)")
    p.add_argument("--profile", action="store_true", help="also record one run of ours under py-spy")
    p.add_argument("--no-readme", action="store_true", help="do not update bench/README.md and the plots")
    a = p.parse_args(argv)
    names = a.names or ORDER
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    ctx = Ctx(quick=a.quick, repeats=a.repeats or (1 if a.quick else 3), profile=a.profile)
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = load_average()
    rows: list[Row] = []
    failed = []
    for name in names:
        log(f"=== {name} (load {load_average()}) ===")
        t0 = time.monotonic()
        try:
            mod = importlib.import_module(f"bench.{name}")
            got = mod.run(ctx)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            got = [Row(name=name, ours=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")]
        rows.extend(got)
        log(f"=== {name} done in {time.monotonic() - t0:.0f}s ===")
    meta = {"date": started, "cores": os.cpu_count(), "load_before": load_before, "load_after": load_average(),
            "quick": ctx.quick, "repeats": ctx.repeats, "names": names}
    print(f"\n{table(rows)}\n")
    print(f"{started}, {os.cpu_count()} cores, load {load_before} → {load_average()}, median of {ctx.repeats} runs"
          f"{' (QUICK sizes)' if ctx.quick else ''}")
    save_raw("table" + ("-quick" if ctx.quick else ""), {"meta": meta, "rows": dump_rows(rows)})
    if not a.no_readme and not ctx.quick:
        from bench import report

        report.update(meta, rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
