"""The whole flow on the embedded synthetic data in one command: ``python -m demo --out runs/demo``.

The orchestration of every stage lives here, above them all, so that no stage package has to know
the ones after it: train/ never imports export/, build_fpga/ or host's CLI to run a demo.
"""
