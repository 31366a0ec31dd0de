"""Export stage: frozen backbone to QONNX, verified bit-exact, and the software head (python -m export)."""
