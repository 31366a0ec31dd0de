"""Speed and memory of the flow, measured side by side against the tools a user would otherwise use.

``python -m bench [--quick] [--only NAME-PREFIX] [--out DIR]`` prints one JSON line per measurement
and writes ``DIR/results.md`` (default: this package's folder) and ``DIR/results.png``.

Every line has ``name``, ``kind`` ("speed", "memory", "estimate", "skipped" or "error"), ``ours_s``
and ``theirs_s`` (seconds for the same work; null where not a timing), ``speedup`` = theirs_s /
ours_s, ``identical`` (the outputs match exactly where they should; null where not applicable),
``target`` and ``met``; ``gap`` explains an unmet target, ``note`` a caveat; the rest are details
(batch, images, shapes, top-1 accuracies, resources).

1. ``emulator_vs_{torch,onnxruntime,qonnx}/<preset>/b<batch>`` (``extraction.py``): the host emulator
   against the Brevitas network in torch, a float ONNX graph of it in onnxruntime, and qonnx's
   reference executor on the exported QONNX graph.
2. ``pack_vs_finn/*``, ``unpack_vs_finn/*`` (``packing.py``): the accelerator's streams, host.packing
   against finn.util.data_packing.
3. ``head_vs_sklearn/*``, ``head_peak_rss/*`` (``head.py``): the float head on Flowers-size features,
   host.heads against scikit-learn, and host training's peak memory.
4. ``finn_estimate/<preset>/<board>`` (``finn_estimates.py``): FINN's fps/LUT/BRAM estimates at the
   highest fitting target.

Speed claims of the project live here, never in timed tests (tests/bench/ checks the harness only).
This package imports nothing heavy at import time, so ``python -c`` children can use host/ alone.
"""
