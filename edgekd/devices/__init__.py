"""Measure on the user's own devices over SSH: registry, transport, remote runs, calibration, closed loop."""
