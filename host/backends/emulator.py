"""The ``emulator`` backend: the bundle's bit-exact numpy model of the accelerator."""

from ..emulator import load_emulator
from ..errors import BnnError
from .base import Backend


class EmulatorBackend(Backend):
    """Runs ``host.emulator`` on the bundle's ``emulator.npz``; runs anywhere numpy does."""

    name = "emulator"
    # One batch holds every layer's output as float32: 64 paper-size images stay well under
    # 100 MB, which a 512 MB board can afford.
    default_batch_size = 64

    def __init__(self, bundle):
        super().__init__(bundle)
        self._emulator = load_emulator(bundle.emulator_path)
        # A build bug could pair the manifest with weights of another network: say so here
        # rather than fail on the first batch with a shape error.
        if self._emulator.input_shape != tuple(bundle.input_shape) \
                or self._emulator.feature_width != bundle.feature_width:
            raise BnnError("%s: emulator takes %s images and gives %d features, but the bundle manifest says %s and %d"
                           % (bundle.emulator_path, self._emulator.input_shape, self._emulator.feature_width,
                              tuple(bundle.input_shape), bundle.feature_width))

    def _run(self, images):
        return self._emulator.extract(images, batch_size=images.shape[0])
