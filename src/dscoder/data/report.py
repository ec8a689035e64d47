"""The human-readable build report: `report.md` and `report.png` from the stats of `dscoder data build`
(what the paper's Table 1 and §2 funnel describe for the real corpus).

The Markdown holds the stage funnel (in / kept / dropped by reason), the output languages by bytes, and the
files dropped by decontamination with the benchmark task they matched; the PNG holds two bar charts, languages
by bytes and drop reasons by count. Matplotlib runs headless (a bare Figure, Agg) and is imported only here.
"""
from __future__ import annotations

MAX_LISTED = 50      # decontaminated files listed in the Markdown; the full list is in drops.jsonl


def _drop_reasons(stats: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for stage, row in stats["stages"].items():
        for reason, n in row.get("dropped", {}).items():
            out[f"{stage}: {reason}"] = n
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def render_markdown(stats: dict) -> str:
    """The report as Markdown text (pure: stats dict in, text out)."""
    out = stats["output"]
    lines = ["# Data build report", "",
             f"{out['samples']} samples, {out['bytes'] / 1e6:.2f} MB, {out['shards']} shard(s).", "",
             "## Stages", "", "| stage | in | kept | dropped (by reason) |", "|---|---:|---:|---|"]
    for stage, row in stats["stages"].items():
        kept = row.get("kept", row.get("samples", ""))
        reasons = ", ".join(f"{r} {n}" for r, n in row.get("dropped", {}).items()) or "-"
        lines.append(f"| {stage} | {row['in']} | {kept} | {reasons} |")
    lines += ["", "`repo_order` turns files into samples (one per dependency component); `near_dedup` counts samples.",
              "", "## Languages (output)", "", "| language | MB | files |", "|---|---:|---:|"]
    langs = sorted(out["bytes_per_language"].items(), key=lambda kv: (-kv[1], kv[0]))
    lines += [f"| {lang} | {b / 1e6:.3f} | {out['files_per_language'].get(lang, 0)} |" for lang, b in langs]
    dec = stats.get("decontaminated", [])
    lines += ["", f"## Decontamination ({len(dec)} file(s) dropped)", ""]
    if dec:
        lines += ["| repo | path | matched |", "|---|---|---|"]
        lines += [f"| {d['repo']} | {d['path']} | {d['match']} |" for d in dec[:MAX_LISTED]]
        if len(dec) > MAX_LISTED:
            lines.append(f"\n... and {len(dec) - MAX_LISTED} more in drops.jsonl")
    bench = ", ".join(stats["settings"].get("benchmarks", [])) or "none"
    lines += ["", f"Benchmarks screened: {bench}.", ""]
    return "\n".join(lines)


def render_png(stats: dict) -> bytes:
    """Two horizontal bar charts as PNG bytes: output bytes per language, dropped files per (stage: reason)."""
    import io

    from matplotlib.figure import Figure     # no pyplot: no GUI backend search, a third less import time

    langs = sorted(stats["output"]["bytes_per_language"].items(), key=lambda kv: -kv[1])[:25]
    drops = list(_drop_reasons(stats).items())[:25]
    height = max(3.0, 0.3 * max(len(langs), len(drops), 1) + 1.5)
    fig = Figure(figsize=(13, height))
    a, b = fig.subplots(1, 2)
    for ax, items, title, xlabel in ((a, langs, "Output by language", "MB"),
                                     (b, drops, "Dropped by stage: reason", "items")):
        labels = [k for k, _ in items][::-1]
        values = [v / 1e6 if ax is a else v for _, v in items][::-1]
        ax.barh(labels, values, color="#4c72b0" if ax is a else "#dd8452")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if not items:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})    # Agg renders PNG headless
    return buf.getvalue()
