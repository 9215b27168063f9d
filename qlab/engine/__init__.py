"""Backtest engines: the fill model (orders.py), the fast engine, sweeps, the reference loop, the lookahead guard."""
