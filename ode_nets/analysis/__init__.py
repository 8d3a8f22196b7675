"""Physical diagnostics of trained networks (`diagnostics`: eqs 21-32, 83, 103-108) and stability of forward
propagation (`stability`: Jacobian eigenvalues, the RevNet example)."""
