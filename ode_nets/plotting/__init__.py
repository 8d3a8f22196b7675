"""The papers' figures from run folders: training curves, parameters against the layer, transformed data,
trajectories (`figures`), and the diagnostics figures and tables (`diagnostics`)."""

from ode_nets.plotting.figures import plot_curves, plot_run, read_metrics

__all__ = ["plot_run", "plot_curves", "read_metrics"]
