"""The latest table and the plots into ``bench/README.md`` and ``bench/results/*.png``.

``bench/run`` calls :func:`update` after a full (non-quick) run; ``python -m bench.report``
redoes it from the raw JSON of the last run (``bench/results/*.json``).
"""

from __future__ import annotations

import re
import sys

from bench.common import MiB, RESULTS, ROOT, Row, load_raw

README = ROOT / "bench" / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def plot_secondary_lag(raw: dict) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not raw or not raw.get("runs"):
        return None
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for i, r in enumerate(raw["runs"]):
        pts = [(t, lag) for t, lag in r["lags"] if lag is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, lw=0.8, alpha=0.8,
                label=f"run {i + 1}: p99 {r['p99']:.2f} s, max {r['max']:.2f} s")
    ax.axhline(5.0, color="red", ls="--", lw=1, label="target: p99 ≤ 5 s")
    ax.set_xlabel("upload to the primary (s since start)")
    ax.set_ylabel("seconds until verified on the secondary")
    ax.set_title(f"Secondary lag, {raw['count']} snapshots per run (S3 → GCS emulator)")
    # lags span milliseconds to seconds: a log scale keeps both them and the target readable
    ax.set_yscale("log")
    ax.set_ylim(0.001, 20)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out = RESULTS / "secondary_lag.png"
    fig.savefig(out)
    plt.close(fig)
    return out.name


def plot_memory(raw: dict) -> str | None:
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not raw or not raw.get("full"):
        return None
    sizes = sorted(int(s) for s in raw["full"])
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    series = {
        "full snapshot → S3, compression off": [raw["full"][str(s)]["none"] for s in sizes],
        "full snapshot → S3, gzip": [raw["full"][str(s)]["gzip"] for s in sizes],
        "copy of one snapshot S3 → S3 (streamed)": [raw["copy"][str(s)] for s in sizes],
    }
    xs = [s / MiB for s in sizes]
    for label, runs in series.items():
        med = [statistics.median(r) for r in runs]
        ax.plot(xs, med, "o-", label=label)
        for x, r in zip(xs, runs):
            ax.scatter([x] * len(r), r, s=8, alpha=0.35, color=ax.lines[-1].get_color())
    ax.axhline(150, color="red", ls="--", lw=1, label="target: ≤ 150 MiB")
    if raw.get("baseline_mib"):
        ax.axhline(raw["baseline_mib"], color="grey", ls=":", lw=1, label="process after imports")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x:g} MiB" for x in xs])
    ax.set_xlabel("etcd db / snapshot size")
    ax.set_ylabel("peak RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Peak RSS of our process against size (median line, each run a dot)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = RESULTS / "memory.png"
    fig.savefig(out)
    plt.close(fig)
    return out.name


def render(meta: dict, rows: list[Row]) -> str:
    from bench.main import table

    plots = [p for p in (plot_secondary_lag(load_raw("secondary_lag")), plot_memory(load_raw("memory"))) if p]
    lines = [
        START,
        f"Latest run: **{meta['date']}**, **{meta['cores']} cores** (shared; load average "
        f"{meta['load_before']} before → {meta['load_after']} after), median of {meta['repeats']} runs of each "
        f"side. Benchmarks: {', '.join(meta['names'])}.",
        "",
        table(rows),
        "",
    ]
    for p in plots:
        lines.append(f"![{p}](results/{p})")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def update(meta: dict, rows: list[Row]) -> None:
    block = render(meta, rows)
    text = README.read_text() if README.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _m: block, text, flags=re.S)
    README.write_text(text)


def main() -> int:
    saved = load_raw("table")
    if not saved:
        print("no bench/results/table.json: run bench/run first", file=sys.stderr)
        return 1
    rows = [Row(**r) for r in saved["rows"]]
    update(saved["meta"], rows)
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
