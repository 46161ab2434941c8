"""The model: layers as (y, backward) closures, densities, posterior families, the VAE, objectives, Adam, and the fused twin (fastpath)."""
