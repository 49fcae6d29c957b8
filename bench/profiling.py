"""Reading py-spy's speedscope output: where the samples go, by function."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

# Leaf frames that are a thread waiting (for the network, a lock, a queue), not working: py-spy
# samples them when they wait inside C without having released the GIL in a way it can see.
WAITING = {"select", "wait", "_worker", "do_poll", "readinto", "run", "_blocking", "sleep", "acquire", "get",
           "_wait_for_tstate_lock", "recv_into", "poll", "sampler"}


def top(path: str | Path, n: int = 15, own_only: bool = False) -> dict:
    """Self and inclusive sample shares per function over every thread of the profile.

    ``own_only`` keeps frames of this project (``etcdbr``) for the inclusive list."""
    data = json.loads(Path(path).read_text())
    frames = data["shared"]["frames"]
    total = 0
    self_c: Counter = Counter()
    incl_c: Counter = Counter()
    for prof in data["profiles"]:
        samples = prof.get("samples", [])
        weights = prof.get("weights") or [1] * len(samples)
        for stack, w in zip(samples, weights):
            if not stack:
                continue
            if frames[stack[-1]]["name"].split(".")[-1] in WAITING:
                continue
            total += w
            self_c[stack[-1]] += w
            for idx in set(stack):
                incl_c[idx] += w

    def label(i: int) -> str:
        f = frames[i]
        file = (f.get("file") or "").split("site-packages/")[-1].split("/src/")[-1]
        return f"{f['name']} ({file}:{f.get('line', '?')})"

    def keep(i: int) -> bool:
        return not own_only or "etcdbr" in (frames[i].get("file") or "")

    return {
        "samples": total or 1,
        "self": [(label(i), round(100 * c / total, 1)) for i, c in self_c.most_common() if keep(i)][:n],
        "inclusive": [(label(i), round(100 * c / total, 1)) for i, c in incl_c.most_common() if keep(i)][:n],
    }


def summary(path: str | Path, n: int = 12) -> str:
    t = top(path, n)
    out = [f"profile {path}: {t['samples']:.1f} busy sample-seconds (waiting frames left out)"]
    out.append("  self time (C calls count towards the Python line calling them):")
    out += [f"    {p:5.1f}%  {name}" for name, p in t["self"]]
    out.append("  inclusive:")
    out += [f"    {p:5.1f}%  {name}" for name, p in top(path, n, own_only=True)["inclusive"]]
    return "\n".join(out)
