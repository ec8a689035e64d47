"""`report.md` and `report.png` of `dscoder data web`, from its stats: pages read, the recall iterations
(DeepSeekMath §2.1: seed size, pages recalled, domains marked, URL prefixes annotated, pages added to the seed),
the dedup / decontamination funnel and the top domains of the output. The PNG uses the bar panels of
`data.report` (Pillow)."""
from __future__ import annotations

from ..report import bar_panels_png

MAX_DOMAINS = 30


def render_markdown(stats: dict) -> str:
    out, label = stats["output"], stats["label"]
    lines = [f"# Web recall report ({label})", "",
             f"{out['pages']} {label}-related pages, {out['bytes'] / 1e6:.2f} MB, {out['shards']} shard(s).", "",
             "## Read", "", "| input | records | pages | dropped (by reason) |", "|---|---:|---:|---|"]
    for what in ("seed", "pool"):
        row = stats["read"][what]
        reasons = ", ".join(f"{r} {n}" for r, n in row["dropped"].items()) or "-"
        lines.append(f"| {what} | {row['records']} | {row['pages']} | {reasons} |")
    lines += ["", f"Duplicate URLs in the pool: {stats['pool_duplicate_urls']}.", "",
              "## Iterations", "",
              "| iteration | seed pages | negatives | recalled | new | domains marked | prefixes annotated | "
              "added to seed |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for it in stats["iterations"]:
        lines.append(f"| {it['iteration']} | {it['positives']} | {it['negatives']} | {it['recalled']} | "
                     f"{it['recalled_new']} | {it['domains_marked']} | {it['prefixes_annotated']} | "
                     f"{it['added_to_seed']} |")
    for it in stats["iterations"]:
        marked = ", ".join(f"{d} ({v['recalled']}/{v['pages']})" for d, v in list(it["domains"].items())[:20])
        lines += ["", f"Iteration {it['iteration']}: domains marked: {marked or 'none'}; "
                      f"annotated: {', '.join(it['annotated'][:20]) or 'none'}."]
    lines += ["", "## After recall", "", "| stage | in | kept | dropped (by reason) |", "|---|---:|---:|---|"]
    for stage, row in stats["stages"].items():
        reasons = ", ".join(f"{r} {n}" for r, n in row["dropped"].items()) or "-"
        lines.append(f"| {stage} | {row['in']} | {row['kept']} | {reasons} |")
    lines += ["", "## Output by first iteration", "", "| iteration | pages |", "|---:|---:|"]
    lines += [f"| {k} | {n} |" for k, n in out["pages_per_iteration"].items()]
    lines += ["", "## Top domains (output)", "", "| domain | pages |", "|---|---:|"]
    lines += [f"| {d} | {n} |" for d, n in list(out["domains"].items())[:MAX_DOMAINS]]
    bench = ", ".join(stats["settings"].get("benchmarks", [])) or "none"
    lines += ["", f"Benchmarks screened: {bench}.", ""]
    return "\n".join(lines)


def render_png(stats: dict) -> bytes:
    """Two bar panels: pages recalled per iteration, and pages added to the seed per iteration."""
    its = stats["iterations"]
    recalled = [(f"iteration {it['iteration']}", float(it["recalled"])) for it in its]
    added = [(f"iteration {it['iteration']}", float(it["added_to_seed"])) for it in its]
    return bar_panels_png(("Pages recalled per iteration", recalled, ""),
                          ("Pages added to the seed (URL annotation)", added, ""))
