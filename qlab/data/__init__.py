"""Market data: the Candles type and its validation, the DuckDB store, data quality, the bundled sample."""
