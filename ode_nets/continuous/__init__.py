"""Continuous-time models only a continuous-depth view gives (docs/continuous_time.md)."""
