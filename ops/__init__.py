"""Watching and maintaining the engine (histograms, health, probes). Imports engine only."""
