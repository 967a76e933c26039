"""The HTML report: aggregates stored telemetry, breaches and evaluation results page by page and
renders them as one self-contained HTML file (plotly, its JavaScript inlined) that works offline.

``report.data.gather`` reads through the ports (``store.ports``, ``report.ports``) and returns a
``ReportData``; ``report.render.render_html`` turns that into the page. The composition root
(``evalstream.wiring.report``) picks the adapters.
"""

from report.data import AppSeries, Incident, ReportData, ReportRequest, gather
from report.exceptions import ReportError
from report.ports import BreachLog
from report.prices import PriceTable, TokenPrice
from report.render import render_html

__all__ = [
    "AppSeries",
    "BreachLog",
    "Incident",
    "PriceTable",
    "ReportData",
    "ReportError",
    "ReportRequest",
    "TokenPrice",
    "gather",
    "render_html",
]
