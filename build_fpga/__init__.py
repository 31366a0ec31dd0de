"""FINN dataflow build of the frozen binary backbone: environment, boards, estimate flow."""
