"""Measuring this host: op costs for calibrated profiles, the op sweep, timing candidate plans."""
