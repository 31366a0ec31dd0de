"""The integer backbone in the host emulator's layout (NHWC, im2col column order).

The deploy bundle's emulator weights are read from FINN's streamlined graph (build_fpga/); this
conversion from the torch side is the reference they are checked against.
"""

import numpy as np


def emulator_arrays(layers, input_size):
    """(spec, weights, thresholds) for host.emulator.save_emulator / Emulator."""
    h = w = input_size
    c = 3
    spec_layers, weights, thresholds = [], [], []
    prev_conv_shape = None
    for il in layers:
        if il.kind == "conv":
            out, cin, k, _ = il.weight.shape
            wt = il.weight.transpose(0, 2, 3, 1).reshape(out, -1)  # (out, kh, kw, c)
            in_shape = [h, w, c]
            h = (h + 2 * il.padding - k) // il.stride + 1
            w = h
            if il.pool:
                h = (h - il.pool[0]) // il.pool[1] + 1
                w = h
            c = out
            out_shape = [h, w, c]
            prev_conv_shape = (h, w, c)
            entry = {"kind": "conv", "kernel": k, "stride": il.stride, "padding": il.padding,
                     "pad_value": il.pad_value, "pool": list(il.pool) if il.pool else None}
        else:
            out, fan_in = il.weight.shape
            wt = il.weight
            if prev_conv_shape is not None:
                ph, pw, pc = prev_conv_shape
                # torch flattens (c, h, w); the NHWC stream arrives as (h, w, c).
                wt = wt.reshape(out, pc, ph, pw).transpose(0, 2, 3, 1).reshape(out, -1)
                prev_conv_shape = None
            in_shape = [fan_in]
            out_shape = [out]
            entry = {"kind": "fc", "kernel": None, "stride": 1, "padding": 0, "pad_value": 0.0, "pool": None}
        entry.update(name=il.name, in_shape=in_shape, out_shape=out_shape)
        spec_layers.append(entry)
        weights.append(np.ascontiguousarray(wt, dtype=np.int8))
        thresholds.append(il.threshold.astype(np.int64))
    spec = {"input": {"shape": [input_size, input_size, 3], "datatype": "UINT8"}, "layers": spec_layers}
    return spec, weights, thresholds
