"""Firecracker control plane: binary discovery, versioned API client, MicroVM lifecycle, probe guest."""
