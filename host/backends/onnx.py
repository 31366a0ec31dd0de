"""The ``onnx`` backend: the bundle's QONNX graph executed by qonnx, a reference on a PC.

The graph takes NCHW float32 tensors holding the raw uint8 pixel values and returns +-1 floats
of shape (1, D). qonnx executes node by node, so this is slow; it exists to show that the
exported graph, the emulator and the accelerator agree bit for bit.
"""

import numpy as np

from ..errors import BnnError
from .base import Backend


def load_qonnx(path):
    """qonnx's ModelWrapper of ``path``; any unreadable graph (onnx's DecodeError, external data that
    points outside its folder, ...) is one BnnError line."""
    try:
        from qonnx.core.modelwrapper import ModelWrapper
    except ImportError:
        raise BnnError("reading %s needs qonnx (pip install qonnx)" % path) from None
    try:
        return ModelWrapper(path)
    except Exception as e:
        raise BnnError("%s: cannot read the QONNX graph (%s)" % (path, e)) from None


class OnnxBackend(Backend):
    """Runs the bundle's ``onnx`` file with ``qonnx.core.onnx_exec.execute_onnx``, image by image."""

    name = "onnx"
    # Images go through the graph one at a time anyway; this only bounds the NCHW copy.
    default_batch_size = 16

    def __init__(self, bundle):
        super().__init__(bundle)
        path = bundle.onnx_path
        if path is None and bundle.manifest.get("onnx"):
            raise BnnError("%s: this copy of the bundle has no %s (the copy on a board leaves pc/ out); run the onnx "
                           "backend on the PC's copy, or use the emulator backend"
                           % (bundle.root, bundle.manifest["onnx"]))
        if path is None:
            raise BnnError("%s: bundle has no QONNX graph (manifest field 'onnx' is null); use the emulator backend"
                           % bundle.root)
        try:
            from qonnx.core.onnx_exec import execute_onnx
        except ImportError:
            raise BnnError("onnx backend needs qonnx (pip install qonnx)") from None
        model = load_qonnx(path)
        if len(model.graph.input) != 1 or len(model.graph.output) != 1:
            raise BnnError("%s: expected a graph with one input and one output, got %d and %d"
                           % (path, len(model.graph.input), len(model.graph.output)))
        self._input = model.graph.input[0].name
        self._output = model.graph.output[0].name
        h, w, c = bundle.input_shape
        shape = model.get_tensor_shape(self._input)
        if shape is None or tuple(shape) != (1, c, h, w):
            raise BnnError("%s: graph input %r has shape %s, the bundle needs (1, %d, %d, %d) (NCHW)"
                           % (path, self._input, shape, c, h, w))
        shape = model.get_tensor_shape(self._output)
        if shape is None or int(np.prod(shape)) != bundle.feature_width:
            raise BnnError("%s: graph output %r has shape %s, the bundle needs %d features"
                           % (path, self._output, shape, bundle.feature_width))
        self._model = model
        self._execute = execute_onnx
        self._path = path

    def _run(self, images):
        nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
        out = np.empty((images.shape[0], self.feature_width), dtype=np.int8)
        for k in range(nchw.shape[0]):
            y = np.asarray(self._execute(self._model, {self._input: nchw[k: k + 1]})[self._output]).reshape(-1)
            pos = y == 1
            if not np.all(pos | (y == -1)):
                raise BnnError("%s: graph output is not +-1 (found %r): not a binarised backbone"
                               % (self._path, y[~pos & (y != -1)][0].item()))
            out[k] = np.where(pos, 1, -1)
        return out
