"""Features that swap a model's layers by name after it is built: weight-only int8 / int4
linears and their CPU kernels (linear.py, kernels.py),
the saved form of a quantised model (store.py), and the CPU matrix-vector path for batch-1
decoding (matvec.py). It is the lowest edge: it imports only the core (never checkpoints/, which
asks it for the quantised format)."""
