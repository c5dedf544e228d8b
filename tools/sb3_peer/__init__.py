"""Stable-Baselines3's own test suite as a peer suite for HybridPG (see README.md beside this file)."""
