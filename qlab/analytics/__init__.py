"""Metrics, portfolio analytics, plots and reports of results."""
