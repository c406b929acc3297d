"""A study's report: per arm the mean and spread of Rank-1 and mAP over seeds with each seed's value, the paired
difference against the control with its 95% t interval, and DG-Net's generation measures (``dgnet.quality``),
as ``study.md``, ``study.json`` and ``study.png``."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from dgnet.evaluation.stats import paired_interval, summarize
from dgnet.fileio import write_text_atomic

METRICS = (("rank1", "Rank-1"), ("mAP", "mAP"))
# The dgnet.quality rows and measures the report carries: the swap against its ceiling (the ideal render), and the
# reconstruction; followed_b: the image is nearest to identity b, the appearance source; IoU: with a's silhouette.
QUALITY = (("swap G(s_a,f_b)", "followed_b"), ("swap G(s_a,f_b)", "silhouette_iou"),
           ("recon G(s_a,f_a)", "leaked_a"), ("ideal x_ab (rendered)", "followed_b"),
           ("ideal x_ab (rendered)", "silhouette_iou"))


def summary(by_arm: dict[str, dict[int, dict]], control: str = "control") -> dict:
    """``{arm: {"seeds", metric: summarize, "vs_control": {metric: paired_interval}, "quality": {...}}}``; values
    in percent. The paired difference uses the seeds both arms finished."""
    out: dict = {}
    ctrl = by_arm.get(control, {})
    for arm, runs in by_arm.items():
        if not runs:
            out[arm] = {"seeds": []}
            continue
        seeds = sorted(runs)
        entry: dict = {"seeds": seeds}
        for key, _ in METRICS:
            entry[key] = summarize([100 * runs[s]["metrics"][key] for s in seeds])
        common = [s for s in seeds if s in ctrl]
        if arm != control and common:
            entry["vs_control"] = {key: {**paired_interval([100 * runs[s]["metrics"][key] for s in common],
                                                           [100 * ctrl[s]["metrics"][key] for s in common]),
                                         "seeds": common} for key, _ in METRICS}
        q = [runs[s].get("quality") for s in seeds]
        if all(q):
            entry["quality"] = {f"{row}: {m}": summarize([100 * x[row][m] for x in q]) for row, m in QUALITY}
        out[arm] = entry
    return out


def _spread(s: dict) -> str:
    std = "-" if s["std"] is None else f"{s['std']:.1f}"
    return f"{s['mean']:.1f} ± {std} [{s['min']:.1f}, {s['max']:.1f}]"


def _interval(d: dict) -> str:
    if d["lo"] is None:
        return f"{d['mean']:+.1f} (one seed: no interval)"
    return f"{d['mean']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]"


def format_markdown(summ: dict, about: dict[str, str], control: str = "control") -> str:
    """The study's tables in Markdown."""
    lines = ["| arm | seeds | Rank-1 mean ± std [min, max] | per seed | mAP mean ± std [min, max] | per seed |",
             "|---|---|---|---|---|---|"]
    for arm, e in summ.items():
        if not e["seeds"]:
            lines.append(f"| {arm} | none finished | | | | |")
            continue
        cells = []
        for key, _ in METRICS:
            cells += [_spread(e[key]), ", ".join(f"{v:.1f}" for v in e[key]["values"])]
        lines.append(f"| {arm} | {', '.join(map(str, e['seeds']))} | " + " | ".join(cells) + " |")
    lines += ["", f"Paired difference against {control} (same seed), mean and 95% t interval "
              "(mean ± t(0.975, n-1) · sd / √n), in points:", "",
              "| arm | seeds | Rank-1 | mAP | per seed (mAP) |", "|---|---|---|---|---|"]
    for arm, e in summ.items():
        if "vs_control" in e:
            v = e["vs_control"]
            lines.append(f"| {arm} | {', '.join(map(str, v['mAP']['seeds']))} | {_interval(v['rank1'])} | "
                         f"{_interval(v['mAP'])} | {', '.join(f'{x:+.1f}' for x in v['mAP']['values'])} |")
    gen = {arm: e["quality"] for arm, e in summ.items() if "quality" in e}
    if gen:
        heads = [f"{row.split(' ')[0]} {m}" for row, m in QUALITY]
        lines += ["", "Generation (dgnet.quality, %, mean over seeds [min, max]): followed_b: nearest to the "
                  "appearance source's identity; silhouette_iou: with the structure source; leaked_a: the "
                  "reconstruction nearest to its own identity; ideal: the true swap rendered by the set (the ceiling).",
                  "", "| arm | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
        for arm, q in gen.items():
            lines.append(f"| {arm} | " + " | ".join(
                f"{q[f'{row}: {m}']['mean']:.1f} [{q[f'{row}: {m}']['min']:.1f}, {q[f'{row}: {m}']['max']:.1f}]"
                for row, m in QUALITY) + " |")
    lines += ["", "Arms:", ""] + [f"- **{arm}**: {text}" for arm, text in about.items()]
    return "\n".join(lines) + "\n"


def plot(summ: dict, path: str | Path) -> Path:
    """Rank-1 and mAP per arm: each seed a dot, the mean a horizontal line, the range a vertical one (no bars: the
    axis does not start at 0). matplotlib when installed, else PIL."""
    path = Path(path)
    arms = [a for a, e in summ.items() if e["seeds"]]
    try:
        import matplotlib  # optional: only the plot needs it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pil(summ, arms, path)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 + 1.2 * len(arms), 4))
    for ax, (key, label) in zip(axes, METRICS, strict=True):
        for i, arm in enumerate(arms):
            s = summ[arm][key]
            ax.plot([i, i], [s["min"], s["max"]], color="#9ecae1", linewidth=3)
            ax.plot([i - 0.25, i + 0.25], [s["mean"], s["mean"]], color="black", linewidth=2)
            ax.plot([i] * len(s["values"]), s["values"], "o", color="#08519c")
        ax.set_xticks(range(len(arms)), arms, rotation=30)
        ax.set_ylabel(f"{label} (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_pil(summ: dict, arms: list[str], path: Path) -> Path:
    panel_w, h, top, bottom, left = 80 + 70 * max(1, len(arms)), 360, 30, 60, 50
    img = Image.new("RGB", (panel_w * len(METRICS), h), "white")
    d = ImageDraw.Draw(img)
    for p, (key, label) in enumerate(METRICS):
        x0 = p * panel_w
        vals = [v for a in arms for v in summ[a][key]["values"]] or [0.0, 100.0]
        lo, hi = max(0.0, min(vals) - 5), min(100.0, max(vals) + 5)
        hi = hi if hi > lo else lo + 1

        def y(v: float, lo: float = lo, hi: float = hi) -> float:
            return top + (h - top - bottom) * (hi - v) / (hi - lo)

        d.text((x0 + left, 8), f"{label} (%): each seed a dot, the mean a line", fill="black")
        d.line([x0 + left, top, x0 + left, h - bottom], fill="black")
        for t in (lo, (lo + hi) / 2, hi):
            d.text((x0 + 5, y(t) - 6), f"{t:.0f}", fill="black")
        for i, arm in enumerate(arms):
            cx = x0 + left + 40 + 70 * i
            s = summ[arm][key]
            d.line([cx, y(s["min"]), cx, y(s["max"])], fill=(158, 202, 225), width=4)
            d.line([cx - 20, y(s["mean"]), cx + 20, y(s["mean"])], fill="black", width=2)
            for v in s["values"]:
                d.ellipse([cx - 4, y(v) - 4, cx + 4, y(v) + 4], fill=(8, 81, 156))
            d.text((cx - 25, h - bottom + 8), arm[:10], fill="black")
    img.save(path)
    return path


def write_report(by_arm: dict[str, dict[int, dict]], about: dict[str, str], folder: str | Path, spec: dict,
                 control: str = "control") -> dict:
    """Write ``study.md``, ``study.json`` and ``study.png`` in ``folder``; returns the summary."""
    folder = Path(folder)
    summ = summary(by_arm, control)
    runs = {arm: {str(s): r for s, r in recs.items()} for arm, recs in by_arm.items()}
    write_text_atomic(folder / "study.json", json.dumps({"spec": spec, "summary": summ, "runs": runs}, indent=2))
    md = format_markdown(summ, about, control)
    write_text_atomic(folder / "study.md", "# Study\n\n" + md + "\n![Rank-1 and mAP per arm](study.png)\n")
    if any(e["seeds"] for e in summ.values()):
        plot(summ, folder / "study.png")
    return summ
