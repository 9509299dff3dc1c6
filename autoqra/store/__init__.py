"""The run's ledger: every trial result, written before any optimizer hears of it."""
