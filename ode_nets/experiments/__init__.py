"""Experiment tooling on top of models and training: gradient strategies side by side (`compare`), step-time and
memory benchmarks with a PyTorch + torchdiffeq twin (`benchmark`, `peer_torch`), stochastic weight averaging
(`averaging`) and multilevel training (`multilevel`). Each module is used through its own name
(`from ode_nets.experiments import compare`)."""
