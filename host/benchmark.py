"""What ``python -m host bench`` measures on the machine it runs on (the board, usually).

- every available backend's throughput (on a PYNQ board ``pynq`` always, or its error) at several
  batch sizes, on random uint8 images of the bundle's input shape (the accelerator's speed does not
  depend on the pixels);
- packing: the accelerator's input and output streams in FINN's layout (``host.packing``) and
  the feature cache's bits (``host.features``), per image;
- the software head: ``fit_head`` on generated features of the bundle's width, Flowers-size
  (6,149 images, 102 classes) unless ``quick``, with the process's peak RSS;
- the live loop of ``host.live`` (what ``python -m host live`` and ``teach.ipynb`` run), one
  640x480 frame at a time: milliseconds per stage (capture from memory, preprocess, features,
  pack, head) and the frames/s the host side alone sustains, against a 30 frames/s camera.

Every timing runs its workload once untimed (buffer allocation, caches), then repeats it until
``min_seconds`` have passed and reports the mean. The cross-tool comparison (torch, FINN's own
driver) lives in ``bench/``; this module needs numpy only.
"""

import os
import platform
import sys
import time

import numpy as np

from .errors import BnnError
from .features import pack_features, unpack_features
from .packing import DataType, pack, unpack

__all__ = ["BenchConfig", "run_bench", "bench_live", "peak_rss_mb", "time_call"]


class BenchConfig:
    """What to measure; ``quick`` shrinks every workload to a smoke test of a few seconds."""

    def __init__(self, batch_sizes=(1, 8, 64), backends=None, quick=False, min_seconds=None, head_images=None,
                 head_classes=None, head_epochs=None, head_variants=None, seed=0, backend_options=None):
        self.batch_sizes = tuple(int(b) for b in batch_sizes)
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise BnnError("bench: batch sizes must be positive integers, got %r" % (batch_sizes,))
        self.backends = None if backends is None else tuple(backends)
        self.quick = bool(quick)
        self.min_seconds = float(min_seconds if min_seconds is not None else (0.2 if quick else 2.0))
        # Flowers102 as the paper trains on it: 6,149 images of 102 classes
        self.head_images = int(head_images if head_images is not None else (300 if quick else 6149))
        self.head_classes = int(head_classes if head_classes is not None else (10 if quick else 102))
        self.head_epochs = int(head_epochs if head_epochs is not None else (2 if quick else 5))
        self.head_variants = tuple(head_variants if head_variants is not None
                                   else (("float",) if quick else ("float", "binary", "mlp")))
        if self.head_images < 2 * self.head_classes or self.head_classes < 2 or self.head_epochs < 1:
            raise BnnError("bench: need >= 2 classes, >= 2 images per class and >= 1 epoch for the head")
        self.seed = int(seed)
        self.backend_options = dict(backend_options or {})  # backend name -> its make_backend options



def cpu_model() -> str:
    """The processor's name as /proc/cpuinfo gives it (else what platform knows): what a timing ran on."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

def peak_rss_mb():
    """Peak resident memory of this process in MB, or None where neither source exists (Windows).

    Linux's VmHWM first: ru_maxrss survives an exec, so a child started by a large process would
    report its parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return round(peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0), 1)


def time_call(fn, min_seconds, max_repeats=10000):
    """Mean seconds per call of ``fn()`` after one untimed warm-up call, and the number of calls."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= max_repeats:
            return elapsed / calls, calls


def _random_images(rng, n, shape):
    return rng.integers(0, 256, size=(n,) + tuple(shape), dtype=np.uint8)


def bench_backend(bundle, name, cfg, rng):
    """{batch size: {"images_per_s", "ms_per_batch", "batches"}} of backend ``name``."""
    from .backends import make_backend

    out = {}
    backend = make_backend(name, bundle, **cfg.backend_options.get(name, {}))
    try:
        for bs in cfg.batch_sizes:
            x = _random_images(rng, bs, bundle.input_shape)
            secs, calls = time_call(lambda x=x, bs=bs: backend.extract(x, batch_size=bs), cfg.min_seconds)
            out[str(bs)] = {"images_per_s": round(bs / secs, 2), "ms_per_batch": round(1e3 * secs, 3),
                            "batches": calls}
    finally:
        backend.close()
    return out


def _random_values(rng, shape, dt):
    if dt.is_bipolar:
        return np.where(rng.random(shape) < 0.5, np.int8(-1), np.int8(1))
    return rng.integers(dt.min, dt.max + 1, size=shape).astype(dt.numpy_dtype)


def bench_packing(bundle, cfg, rng):
    """Images per second and MB/s of packing the input stream and unpacking the output stream."""
    io = bundle.io
    n = max(cfg.batch_sizes)
    out = {"images": n}
    for stream, dt_name, folded_key in (("input", io["idt"][0], "ishape_folded"),
                                        ("output", io["odt"][0], "oshape_folded")):
        dt = DataType.parse(dt_name)
        shape = (n,) + tuple(io[folded_key][0][1:])
        values = _random_values(rng, shape, dt)
        packed = np.ascontiguousarray(pack(values, dt.name))
        buf = np.empty_like(packed)

        def do_pack(values=values, dt=dt, buf=buf):
            # the copy is part of the work: the pynq backend writes into its DMA buffer
            buf[...] = pack(values, dt.name)

        def do_unpack(packed=packed, dt=dt, shape=shape):
            unpack(packed, dt.name, shape)

        entry = {"datatype": dt.name, "bytes_per_image": int(packed.nbytes // n)}
        for op, fn in (("pack", do_pack), ("unpack", do_unpack)):
            secs, _ = time_call(fn, cfg.min_seconds / 4)
            entry[op + "_images_per_s"] = round(n / secs, 1)
            entry[op + "_mb_per_s"] = round(packed.nbytes / secs / 1e6, 2)
        out[stream] = entry
    feats = np.where(rng.random((n, bundle.feature_width)) < 0.5, np.int8(-1), np.int8(1))
    bits = pack_features(feats)
    entry = {"bytes_per_image": int(bits.shape[1])}
    for op, fn in (("pack", lambda: pack_features(feats)),
                   ("unpack", lambda: unpack_features(bits, bundle.feature_width))):
        secs, _ = time_call(fn, cfg.min_seconds / 4)
        entry[op + "_images_per_s"] = round(n / secs, 1)
    out["feature_cache"] = entry
    return out


def generated_features(rng, n, width, classes, flip=0.3):
    """Packed features of ``n`` images: each class a random +-1 prototype with ``flip`` of its bits flipped."""
    labels = np.arange(n) % classes
    protos = np.where(rng.random((classes, width)) < 0.5, np.int8(-1), np.int8(1))
    packed = np.empty((n, (width + 7) // 8), np.uint8)
    for s in range(0, n, 256):  # never the whole +-1 matrix at once, as on the board
        rows = protos[labels[s:s + 256]]
        flips = rng.random(rows.shape) < flip
        packed[s:s + 256] = pack_features(np.where(flips, -rows, rows))
    return packed, labels


def bench_heads(bundle, cfg, rng):
    """Training time of each head variant on Flowers-size generated features of the bundle's width."""
    from .heads import HeadConfig, fit_head

    packed, labels = generated_features(rng, cfg.head_images, bundle.feature_width, cfg.head_classes)
    classes = ["class_%03d" % k for k in range(cfg.head_classes)]
    out = {"images": cfg.head_images, "classes": cfg.head_classes, "feature_width": bundle.feature_width,
           "adam_epochs": cfg.head_epochs, "packed_mb": round(packed.nbytes / 1e6, 3)}
    for variant in cfg.head_variants:
        # a fixed number of epochs (patience beyond it): the time is comparable across runs
        # adam: a fixed number of epochs (patience beyond it), so the time is comparable across runs;
        # lbfgs (float): the default fit, L2 path included
        hc = HeadConfig(variant=variant, epochs=cfg.head_epochs, patience=cfg.head_epochs + 1, seed=cfg.seed) \
            if variant != "float" else HeadConfig(variant=variant, seed=cfg.seed)
        t = time.perf_counter()
        head, history = fit_head(packed, labels, classes, hc, progress=False, feature_width=bundle.feature_width)
        secs = time.perf_counter() - t
        info = head.meta["train"]
        out[variant] = {"seconds": round(secs, 3), "solver": info["solver"], "l2": info["l2"]["value"],
                        "val_top1": info.get("val_top1")}
        if info["solver"] == "adam":
            out[variant].update(seconds_per_epoch=round(secs / max(1, len(history)), 4), epochs_run=len(history))
        else:
            out[variant]["passes"] = sum(h["passes"] for h in history)
    return out


LIVE_FRAME = (480, 640)  # a USB camera's usual VGA frames, height x width
CAMERA_FPS = 30


def bench_live(bundle, name, cfg, rng, classes=10):
    """The live loop on backend ``name``: mean ms per stage over ``min_seconds`` of 640x480 frames.

    The frames come from memory, so "capture" is only the loop's own overhead: a camera's rate
    is the camera's. The head is a float head of ``classes`` random classes (its cost does not
    depend on the weights). ``host_frames_per_s`` = 1000 / the ms of every stage but capture;
    ``cpu_ms_per_frame`` is the process's CPU time per frame (all threads).
    """
    from .backends import make_backend
    from .heads import Head
    from .live import HOST_STAGES, LivePipeline
    from .sources import FramesSource

    width = bundle.feature_width
    head = Head(variant="float", classes=["class_%d" % k for k in range(classes)], feature_width=width,
                params={"W": rng.standard_normal((width, classes)).astype(np.float32),
                        "b": np.zeros(classes, np.float32)})
    frames = FramesSource([_random_images(rng, 1, LIVE_FRAME + (3,))[0] for _ in range(4)], "random frames")
    backend = make_backend(name, bundle, **cfg.backend_options.get(name, {}))
    try:
        pipe = LivePipeline(bundle, backend, window=10 ** 6)
        pipe.step(frames, head)  # warm-up: buffers, BLAS
        pipe.timer = type(pipe.timer)(window=10 ** 6)
        start, cpu = time.perf_counter(), time.process_time()
        while time.perf_counter() - start < cfg.min_seconds or pipe.timer.count < 3:
            pipe.step(frames, head)
        cpu = time.process_time() - cpu
    finally:
        backend.close()
    ms = pipe.timer.ms()
    host_ms = sum(ms[s] for s in HOST_STAGES)
    return {"backend": name, "frame": "%dx%d" % (LIVE_FRAME[1], LIVE_FRAME[0]), "frames": pipe.timer.count,
            "classes": classes, "ms": {k: round(v, 3) for k, v in ms.items()}, "host_ms": round(host_ms, 3),
            "host_frames_per_s": round(1e3 / host_ms, 1), "loop_frames_per_s": round(pipe.timer.fps(), 1),
            # CPU time of this process per frame: what the loop costs when other work shares the cores
            "cpu_ms_per_frame": round(1e3 * cpu / pipe.timer.count, 3),
            "camera_fps": CAMERA_FPS, "keeps_up_with_camera": bool(1e3 / host_ms >= CAMERA_FPS)}


def run_bench(bundle, cfg=None, progress=None):
    """Every measurement above as one JSON-serialisable dict; ``progress(msg)`` hears what runs."""
    from .backends import available_backends, default_backends

    cfg = cfg if cfg is not None else BenchConfig()
    say = progress or (lambda msg: None)
    rng = np.random.default_rng(cfg.seed)
    available = available_backends(bundle)
    # on a board, a pynq that cannot run is an error entry, not left out (default_backends)
    names = list(cfg.backends) if cfg.backends is not None else default_backends(bundle)
    result = {
        "bundle": {"root": bundle.root, "board": bundle.board, "preset": bundle.preset,
                   "input_shape": list(bundle.input_shape), "feature_width": bundle.feature_width,
                   "digest": bundle.digest},
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
                    "numpy": np.__version__, "cpus": os.cpu_count(), "board_env": os.environ.get("BOARD")},
        "config": {"batch_sizes": list(cfg.batch_sizes), "quick": cfg.quick, "min_seconds": cfg.min_seconds},
        "available_backends": available,
        "backends": {},
    }
    result["streaming_peak_rss_mb"] = {}
    for name in names:
        say("backend %s: batch sizes %s" % (name, ",".join(map(str, cfg.batch_sizes))))
        try:
            result["backends"][name] = bench_backend(bundle, name, cfg, rng)
        except BnnError as e:
            # one broken backend (no overlay, no qonnx) must not hide the others' numbers
            result["backends"][name] = {"error": str(e)}
        # before the live loop, packing and head training: the peak of streaming batches through the
        # backends so far (with --backends one of them, that backend's own), against a board's RAM
        result["streaming_peak_rss_mb"][name] = peak_rss_mb()
    live = [n for n in names if n in available and "error" not in result["backends"][n]][:1]
    if live:
        say("live loop on %s (%dx%d frames)" % (live[0], LIVE_FRAME[1], LIVE_FRAME[0]))
        result["live"] = bench_live(bundle, live[0], cfg, rng)
    say("packing")
    result["packing"] = bench_packing(bundle, cfg, rng)
    say("head training (%d images x %d features, %d classes)" % (cfg.head_images, bundle.feature_width,
                                                               cfg.head_classes))
    result["head_training"] = bench_heads(bundle, cfg, rng)
    result["peak_rss_mb"] = peak_rss_mb()
    return result
