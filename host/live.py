"""The live loop behind ``notebooks/teach.ipynb`` and ``python -m host live``: ``LivePipeline`` turns
a frame (from ``host.sources``) into packed features and the top-k classes of a head, timing each stage
(``STAGES``: capture, preprocess, features, pack, head) in a ``StageTimer``. Teaching the head live is
``host.teach``. numpy only at module level.
"""

import time
from collections import deque

import numpy as np

from .features import pack_features

__all__ = ["STAGES", "HOST_STAGES", "StageTimer", "LivePipeline", "LiveResult"]

STAGES = ("capture", "preprocess", "features", "pack", "head")
# host-side stages: everything but waiting for the camera
HOST_STAGES = STAGES[1:]

# ------------------------------------------------------------------------------------------- the loop

class StageTimer:
    """Milliseconds per stage over the last ``window`` frames, and frames per second of the loop."""

    def __init__(self, window=30):
        self.window = int(window)
        self._frames = deque(maxlen=self.window)  # (end time, {stage: seconds})
        self.count = 0

    def add(self, seconds, end=None):
        self._frames.append((time.perf_counter() if end is None else end, dict(seconds)))
        self.count += 1

    def ms(self):
        """{stage: mean ms} over the window (stages never timed are left out)."""
        out = {}
        for s in STAGES:
            vals = [sec[s] for _, sec in self._frames if s in sec]
            if vals:
                out[s] = 1e3 * sum(vals) / len(vals)
        return out

    def fps(self):
        """Frames per second between the first and last frame of the window; None before two frames."""
        if len(self._frames) < 2:
            return None
        span = self._frames[-1][0] - self._frames[0][0]
        return (len(self._frames) - 1) / span if span > 0 else None

    def host_fps(self):
        """The rate the host side alone could sustain: 1000 / (ms of every stage but capture)."""
        ms = self.ms()
        total = sum(ms.get(s, 0.0) for s in HOST_STAGES)
        return 1e3 / total if total > 0 else None


class LiveResult:
    """One classified frame: the frame, top-k class indices and probabilities, seconds per stage."""

    def __init__(self, frame, top, prob, seconds):
        self.frame, self.top, self.prob, self.seconds = frame, top, prob, seconds


class LivePipeline:
    """Frame -> preprocess -> features (accelerator or emulator) -> packed bits -> head, timed.

    "features" is the backend's whole call: on the board that includes packing the image into the
    accelerator's input stream and unpacking its output (``host.packing``); "pack" is the +-1
    features to bits, the form the example store and the head read.
    """

    def __init__(self, bundle, backend, window=30):
        from .preprocess import Preprocess

        self.bundle = bundle
        self.backend = backend
        self.pp = Preprocess.from_dict(bundle.preprocess, where=bundle.root)
        self.timer = StageTimer(window)

    def features(self, frames, seconds=None):
        """Packed features (N, bytes) of RGB frames; adds the stages' seconds to ``seconds``."""
        from .preprocess import eval_transform

        seconds = {} if seconds is None else seconds
        t0 = time.perf_counter()
        x = np.stack([eval_transform(f, self.pp) for f in frames])
        t1 = time.perf_counter()
        pm1 = self.backend.extract(x, batch_size=len(frames))
        t2 = time.perf_counter()
        packed = pack_features(pm1)
        t3 = time.perf_counter()
        for stage, s in (("preprocess", t1 - t0), ("features", t2 - t1), ("pack", t3 - t2)):
            seconds[stage] = seconds.get(stage, 0.0) + s
        return packed

    def step(self, source, head, k=3):
        """Read one frame from ``source`` and classify it: a LiveResult, also counted in ``timer``."""
        from .heads import predict_topk

        t0 = time.perf_counter()
        frame = source.read()
        seconds = {"capture": time.perf_counter() - t0}
        packed = self.features([frame], seconds)
        t1 = time.perf_counter()
        top, prob = predict_topk(head, packed, k=k)
        end = time.perf_counter()
        seconds["head"] = end - t1
        self.timer.add(seconds, end)
        return LiveResult(frame, top[0], prob[0], seconds)
