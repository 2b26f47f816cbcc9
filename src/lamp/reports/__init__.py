"""Figures and reports of the paper's results (Fig. 2A-B: Kaplan–Meier curves).

Drawing modules import matplotlib themselves, inside the functions that draw, so that
importing `lamp.reports` stays cheap; use `lamp.reports.figures` for the functions.
"""

__all__: list[str] = []
