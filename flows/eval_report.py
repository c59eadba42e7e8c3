"""How ``tierembed eval`` shows its report: a ``rich`` table in the terminal and a PNG
chart of quality against cost (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

from flows.eval import EvalReport, EvalRow

__all__ = ["render_table", "write_chart"]


def _ci(row: EvalRow) -> str:
    if row.vs_local is None:
        return "baseline" if row.name in ("all-local",) or "alone" in row.name else ""
    v = row.vs_local
    return f"{v['diff']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]"


def render_table(report: EvalReport, width: int = 160) -> str:
    """The policy table as text (rich renders it; colours only on a terminal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report.queries} queries, {report.documents} documents; local "
                  f"{report.local}, premium {report.premium} (all-premium estimate "
                  f"${report.all_premium_cost_usd:.6f})")
    for name, justify in (("policy", "left"), ("premium docs", "right"), ("cost", "right"),
                          ("cost vs all-premium", "right"), ("nDCG@10", "right"), ("R@10", "right"),
                          ("MRR@10", "right"), ("nDCG@10 vs all-local (95% CI)", "right"),
                          ("of all-premium", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in report.rows:
        share = "" if row.cost_share is None else f"{row.cost_share:.1%}"
        of_top = "" if row.share_of_premium is None else f"{row.share_of_premium:.1%}"
        table.add_row(row.name, str(row.premium_docs), f"${row.cost_usd:.6f}", share,
                      f"{row.means['nDCG@10']:.3f}", f"{row.means['R@10']:.3f}",
                      f"{row.means['RR@10']:.3f}", _ci(row), of_top)
    console = Console(width=width, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
        for note in report.notes:
            console.print(f"note: {note}")
        if report.spent_usd:
            console.print(f"embedding for this eval cost ${report.spent_usd:.6f} "
                          "(recorded in the spend ledger)")
    return capture.get()


def write_chart(report: EvalReport, path: Path) -> Path:
    """nDCG@10 (with the 95% CI of the difference from all-local) against cost as a share
    of all-premium, one point per policy with a cost estimate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    base = next((r.means["nDCG@10"] for r in report.rows if r.name == "all-local"), None)
    for row in report.rows:
        if row.cost_share is None or row.kind == "version":
            continue
        y = row.means["nDCG@10"]
        err = None
        if row.vs_local is not None and base is not None:
            err = [[y - (base + row.vs_local["low"])], [(base + row.vs_local["high"]) - y]]
        marker = {"what-if": "o", "stored": "s"}.get(row.kind, "^")
        color = "tab:red" if "rrf" in row.name else ("tab:blue" if "coverage" in row.name else "tab:gray")
        ax.errorbar(100 * row.cost_share, y, yerr=err, fmt=marker, color=color, capsize=3)
        ax.annotate(row.name, (100 * row.cost_share, y), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xlabel("cost, % of embedding every document with the premium model")
    ax.set_ylabel("nDCG@10 (error bar: 95% CI, paired vs all-local)")
    ax.set_title(f"tierembed eval: {report.local} + {report.premium}, {report.queries} queries")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
