"""Research on top of backtests: optimisation, walk-forward, robustness, Monte Carlo and stress tests."""
