"""Test support: the finite-difference gradient check and the linear-Gaussian oracle."""
