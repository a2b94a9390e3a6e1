"""numba kernels: one module per concern, arrays and scalars in, arrays out."""
