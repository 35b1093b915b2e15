"""Measuring artifacts: latency, accuracy, the recommended artifact (edgekd.bench.measure, evaluate, runners)."""
