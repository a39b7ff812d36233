"""PNG charts and CSV tables of the weekly report (same figures in both).

matplotlib's object API with the Agg canvas: no pyplot global state, safe in the scheduler's
worker threads; small figures (640x280 px) render in a few tens of milliseconds.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailgateway.jobs.stats import WeeklyStats

if TYPE_CHECKING:
    from matplotlib.axes import Axes

WIDTH_IN, HEIGHT_IN, DPI = 6.4, 2.8, 100
MAX_BULLETINS = 15
PALETTE = ("#1f4e79", "#c0504d", "#9bbb59", "#8064a2", "#4bacc6", "#f79646", "#7f7f7f", "#2c7f5f", "#b65708",
           "#5b5ea6", "#9b2335", "#dfcfbe", "#55b4b0", "#e15d44", "#bc243c", "#98b4d4")


@dataclass(frozen=True)
class Figure:
    name: str  # file stem and Content-ID
    title: str
    png: bytes
    csv: str


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=";", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return buf.getvalue()


def _render(draw: Callable[[Axes], None], title: str, right: float = 0.97) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)
    draw(ax)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    # Fixed margins (room for the legend on the right): tight_layout costs ~100 ms per chart.
    fig.subplots_adjust(left=0.1, right=right, bottom=0.14, top=0.88)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _stacked(stats: WeeklyStats, series: dict[str, list[int]], title: str) -> bytes:
    def draw(ax: Axes) -> None:
        bottom = [0] * len(stats.weeks)
        labels = stats.week_labels
        for i, (name, values) in enumerate(series.items()):
            ax.bar(labels, values, bottom=bottom, label=name, color=PALETTE[i % len(PALETTE)])
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        if series:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        ax.set_ylabel("déclarations", fontsize=8)
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))

    return _render(draw, title, right=0.78)


def _delays(stats: WeeklyStats, title: str) -> bytes:
    def draw(ax: Axes) -> None:
        labels = stats.week_labels
        for values, name, color in ((stats.ack_median_hours, "accusé de réception", PALETTE[0]),
                                    (stats.qualify_median_hours, "qualification", PALETTE[1])):
            # Numeric positions: a week without a value leaves a gap, not a shifted axis.
            points = [(i, v) for i, v in enumerate(values) if v is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name, color=color)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("heures (médiane)", fontsize=8)
        ax.legend(fontsize=7, frameon=False)

    return _render(draw, title)


def _coverage(stats: WeeklyStats, title: str) -> bytes:
    def draw(ax: Axes) -> None:
        shown = stats.bulletins[-MAX_BULLETINS:]  # the CSV has them all; 280 px hold about 15
        names = [f"n° {b['id']}" for b in shown]
        y = list(range(len(names)))
        ax.barh([v - 0.2 for v in y], [b["delivered_pct"] for b in shown], height=0.4,
                label="distribués", color=PALETTE[0])
        ax.barh([v + 0.2 for v in y], [b["acknowledged_pct"] for b in shown], height=0.4,
                label="lus (#lu)", color=PALETTE[2])
        ax.set_yticks(y, names)
        ax.set_ylim(-0.8, max(len(names), 3) - 0.2)  # thin bars even for one bulletin
        ax.set_xlim(0, 100)
        ax.set_xlabel("% des destinataires", fontsize=8)
        ax.legend(fontsize=7, frameon=False)

    return _render(draw, title)


def figures(stats: WeeklyStats) -> list[Figure]:
    weeks = [d.isoformat() for d in stats.weeks]
    types = list(stats.by_type)
    severities = list(stats.by_severity)
    result = [
        Figure("declarations_par_type", "Déclarations par semaine et par type",
               _stacked(stats, stats.by_type, "Déclarations par semaine et par type"),
               _table(["semaine", *types, "total"],
                      [[w, *(stats.by_type[t][i] for t in types), stats.declarations[i]]
                       for i, w in enumerate(weeks)])),
        Figure("declarations_par_gravite", "Déclarations par semaine et par gravité",
               _stacked(stats, stats.by_severity, "Déclarations par semaine et par gravité"),
               _table(["semaine", *severities, "total"],
                      [[w, *(stats.by_severity[s][i] for s in severities), stats.declarations[i]]
                       for i, w in enumerate(weeks)])),
        Figure("delais", "Délais médians d'accusé de réception et de qualification",
               _delays(stats, "Délais médians (heures)"),
               _table(["semaine", "declarations", "accuse_reception_median_h", "qualification_median_h"],
                      [[w, stats.declarations[i], stats.ack_median_hours[i], stats.qualify_median_hours[i]]
                       for i, w in enumerate(weeks)])),
    ]
    if stats.bulletins:
        result.append(Figure(
            "couverture_bulletins", "Couverture des bulletins", _coverage(stats, "Couverture des bulletins"),
            _table(["bulletin", "objet", "date", "destinataires", "distribues", "lus", "taux_distribution_pct",
                    "taux_lecture_pct"],
                   [[b["id"], b["subject"], b["date"], b["recipients"], b["delivered"], b["acknowledged"],
                     b["delivered_pct"], b["acknowledged_pct"]] for b in stats.bulletins])))
    return result
