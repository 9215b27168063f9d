"""Strategies: the indicator registry, signals and StrategySpec."""
