"""What each ``python -m host`` command does, given its parsed arguments (``__main__.py`` parses them).

Results go to stdout (one JSON line, or the table ``predict --table`` asks for); progress bars,
warnings and errors go to stderr.
"""

import json
import math
import os
import sys
import time

from .boards import SMALLEST_BOARD_BYTES
from .cli import key_value_options
from .errors import BnnError, ImageError

# ------------------------------------------------------------------------------------------- helpers

def _positive(name, value):
    if value is not None and value < 1:
        raise BnnError("%s: must be a positive integer, got %d" % (name, value))
    return value


MAX_BATCH_BYTES = SMALLEST_BOARD_BYTES // 2  # one batch of input images


def _batch_fits(name, sizes, bundle):
    per_image = math.prod(bundle.input_shape)
    limit = max(1, MAX_BATCH_BYTES // per_image)
    for n in sizes:
        if n is not None and n > limit:
            raise BnnError("%s: %d images of %s take %d MB, over the %d MB one batch may use (at most %d)"
                           % (name, n, "x".join(map(str, bundle.input_shape)), n * per_image >> 20,
                              MAX_BATCH_BYTES >> 20, limit))


def _load_bundle(args):
    from .boards import pynq_board
    from .bundle import load_bundle

    board = pynq_board() if args.board is None else (args.board.strip() or None)
    return load_bundle(args.bundle, board=board)


def _backend_choice(args, bundle):
    """(name, options) of the backend to use: on a PYNQ board pynq unless another is named (default_backends)."""
    from .backends import backend_options, default_backends

    name = args.backend or default_backends(bundle)[0]
    return name, backend_options(name, args)


def _cache_dir(args, head_path):
    if args.no_cache:
        return None
    if args.feature_cache:
        return os.path.abspath(os.path.expanduser(args.feature_cache))
    return os.path.join(os.path.dirname(os.path.abspath(head_path)), "features-cache")


def _open_dataset(args, split):
    from .datasets import open_dataset

    return open_dataset(args.dataset, split, args.data_dir, **key_value_options(args.option))


def _extract(args, bundle, dataset, head_path):
    """(backend name, DatasetFeatures) of ``dataset`` with the command's backend and cache options."""
    from .extract import extract_dataset

    _positive("--extract-batch-size", args.extract_batch_size)
    _batch_fits("--extract-batch-size", [args.extract_batch_size], bundle)
    _positive("--workers", args.workers)
    name, opts = _backend_choice(args, bundle)
    feats = extract_dataset(bundle, name, dataset, batch_size=args.extract_batch_size,
                            cache_dir=_cache_dir(args, head_path), progress=not args.quiet, workers=args.workers,
                            backend_options=opts)
    return name, feats


def _load_head(args, bundle):
    from .bundle import check_head_compatible
    from .heads import load_head

    head = load_head(args.head)
    check_head_compatible(bundle, head.meta, args.head)
    return head


def _r(x, digits=4):
    """Rounded for JSON; None for a missing or undefined value (top-1 of no images is NaN)."""
    return None if x is None or not math.isfinite(float(x)) else round(float(x), digits)


def _print_json(obj):
    # NaN and Infinity are not JSON: a reader of these lines would fail on them, so they are a bug here
    print(json.dumps(obj, sort_keys=True, allow_nan=False), flush=True)


# ------------------------------------------------------------------------------------------- commands

def cmd_fit(args):
    from .atomic import output_lock
    from .heads import load_head
    from .manifest import check_replaceable_file

    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        raise BnnError("%s: is a directory; --out takes the head file to write, e.g. %s"
                       % (out, os.path.join(out, "head.npz")))
    with output_lock(out):  # removes what a killed fit left next to it
        check_replaceable_file(out, load_head, "head")
        return _fit(args, out)


def _fit(args, out):
    from .benchmark import peak_rss_mb
    from .datasets import check_training_classes
    from .heads import fit_head, head_config, save_head

    t0 = time.perf_counter()
    if args.seed < 0:
        raise BnnError("--seed: must be 0 or more, got %d" % args.seed)
    # checked here, not only in fit_head: a typo should not cost a whole feature extraction first
    cfg = head_config(args.head_type, args.seed, key_value_options(args.solver_option, "--solver-option"))
    bundle = _load_bundle(args)
    dataset = _open_dataset(args, "train")
    check_training_classes(dataset)
    backend, feats = _extract(args, bundle, dataset, out)
    t_train = time.perf_counter()
    meta = bundle.head_meta()
    meta.update(
        bundle={"root": bundle.root, "digest": bundle.digest, "board": bundle.board, "preset": bundle.preset},
        dataset=dataset.describe(),
        features={"backend": feats.backend or backend, "images": len(feats), "skipped": len(feats.skipped),
                  "cache": feats.cache_path},
    )
    if list(dataset.class_names) != list(dataset.classes):
        meta["class_names"] = list(dataset.class_names)
    head, _ = fit_head(feats.packed, feats.labels, dataset.classes, cfg, progress=not args.quiet,
                       feature_width=feats.width, meta=meta)
    train_seconds = time.perf_counter() - t_train
    save_head(out, head)
    info = head.meta["train"]
    if info["l2"]["chosen_by"] == "fallback":
        print("warning: %s: %s; used L2=%g (recorded in the head file)" % (out, info["l2"]["reason"],
                                                                        info["l2"]["value"]), file=sys.stderr)
    _print_json({
        "command": "fit", "head": out, "variant": head.variant, "backend": backend, "dataset": dataset.name,
        "classes": head.num_classes, "feature_width": head.feature_width,
        "train_images": len(feats), "skipped": len(feats.skipped), "n_train": info["n_train"], "n_val": info["n_val"],
        "val_top1": _r(info.get("val_top1")), "solver": info["solver"], "l2": info["l2"]["value"],
        "l2_chosen_by": info["l2"]["chosen_by"], "best_epoch": info.get("best_epoch"),
        "epochs_run": info.get("epochs_run"),
        "cached": feats.cached, "cache": feats.cache_path, "extract_seconds": _r(feats.seconds, 3),
        "images_per_s": _r(feats.images_per_s, 1), "train_seconds": _r(train_seconds, 3),
        "seconds": _r(time.perf_counter() - t0, 3), "peak_rss_mb": peak_rss_mb(),
    })
    return 0


def _confusion_path(args):
    if args.confusion:
        return os.path.abspath(args.confusion)
    stem = os.path.abspath(args.head)
    if stem.endswith(".npz"):
        stem = stem[:-4]
    return stem + ".confusion.png"


def _check_classes(head, dataset, head_path):
    if list(head.classes) == list(dataset.classes):
        return
    if len(head.classes) != len(dataset.classes):
        raise BnnError("%s: head knows %d classes but the %s test split has %d"
                       % (head_path, head.num_classes, dataset.name, len(dataset.classes)))
    k = next(i for i, (a, b) in enumerate(zip(head.classes, dataset.classes)) if a != b)
    raise BnnError("%s: head's class %d is %r but the %s dataset's is %r (trained on another dataset?)"
                   % (head_path, k, head.classes[k], dataset.name, dataset.classes[k]))


def cmd_eval(args):
    from .atomic import output_lock
    from .heads import evaluate
    from .report import check_replaceable_png, save_confusion_png

    t0 = time.perf_counter()
    bundle = _load_bundle(args)
    head = _load_head(args, bundle)
    png = _confusion_path(args)
    dataset = _open_dataset(args, "test")
    _check_classes(head, dataset, args.head)  # before the (long) extraction
    with output_lock(png):
        check_replaceable_png(png)  # before the extraction too: a user's file is refused, not replaced
        backend, feats = _extract(args, bundle, dataset, args.head)
        res = evaluate(head, feats.packed, feats.labels, confusion=True)
        names = head.meta.get("class_names") or head.classes
        save_confusion_png(png, res["confusion"], names, title="%s on %s/test" % (os.path.basename(args.head),
                                                                                 dataset.name))
    _print_json({
        "command": "eval", "head": os.path.abspath(args.head), "variant": head.variant, "backend": backend,
        "dataset": dataset.name, "classes": head.num_classes, "top1": _r(res["top1"]), "top5": _r(res["top5"]),
        "images": res["n"], "skipped": len(feats.skipped), "cached": feats.cached, "cache": feats.cache_path,
        "images_per_s": _r(feats.images_per_s, 1), "extract_seconds": _r(feats.seconds, 3),
        "confusion": png, "seconds": _r(time.perf_counter() - t0, 3),
    })
    return 0


def _prepared(paths, pp):
    """(path, image or None) per path, with a warning for each unreadable one."""
    from .preprocess import decode_image, eval_transform

    for path in paths:
        try:
            yield path, eval_transform(decode_image(path), pp)
        except ImageError as e:
            print("warning: %s" % e, file=sys.stderr, flush=True)
            yield path, None


def _print_table(path, names, probs, backend):
    from .imagedataset import printable  # a file name that is not UTF-8 must not stop the table

    print("%s  (%s backend)" % (printable(path), backend))
    for rank, (name, p) in enumerate(zip(names, probs), 1):
        print("  %d  %-40s %6.2f%%" % (rank, printable(name), 100.0 * p))


def cmd_predict(args):
    import numpy as np

    from .backends import make_backend
    from .heads import predict_topk
    from .preprocess import Preprocess

    _positive("--top", args.top)
    bundle = _load_bundle(args)
    head = _load_head(args, bundle)
    names = head.meta.get("class_names") or head.classes
    pp = Preprocess.from_dict(bundle.preprocess)
    name, opts = _backend_choice(args, bundle)
    _positive("--extract-batch-size", args.extract_batch_size)
    _batch_fits("--extract-batch-size", [args.extract_batch_size], bundle)
    failed = 0
    with make_backend(name, bundle, **opts) as backend:
        bs = args.extract_batch_size or backend.default_batch_size
        stream = _prepared(args.images, pp)
        while True:
            chunk = [item for _, item in zip(range(bs), stream)]
            if not chunk:
                break
            good = [(p, img) for p, img in chunk if img is not None]
            failed += len(chunk) - len(good)
            if not good:
                continue
            feats = backend.extract(np.stack([img for _, img in good]), batch_size=bs)
            idx, prob = predict_topk(head, feats, k=args.top)
            for (path, _), i_row, p_row in zip(good, idx, prob):
                if args.table:
                    _print_table(path, [names[i] for i in i_row], p_row, name)
                else:
                    top = [{"class": head.classes[i], "prob": round(float(p), 6)} for i, p in zip(i_row, p_row)]
                    if "class_names" in head.meta:
                        for t, i in zip(top, i_row):
                            t["name"] = names[i]
                    _print_json({"image": path, "top": top, "backend": name})
    return 1 if failed else 0


def _open_source(args):
    from .sources import open_source

    if args.folder is not None:
        source, _ = open_source(camera=None, folder=args.folder)
        return source
    source, _ = open_source(camera=args.camera)
    return source


def _top_entries(head, names, i_row, p_row):
    top = [{"class": head.classes[i], "prob": round(float(p), 6)} for i, p in zip(i_row, p_row)]
    if "class_names" in head.meta:
        for t, i in zip(top, i_row):
            t["name"] = names[i]
    return top


def _stage_ms(timer):
    return {k: round(v, 3) for k, v in timer.ms().items()}


def cmd_live(args):
    from .backends import make_backend
    from .live import STAGES, LivePipeline, StageTimer

    _positive("--top", args.top)
    _positive("--frames", args.frames)
    bundle = _load_bundle(args)
    head = _load_head(args, bundle)
    names = head.meta.get("class_names") or head.classes
    name, opts = _backend_choice(args, bundle)
    total = StageTimer(window=10 ** 6)  # the whole run, for the summary; the pipeline's own is the last 30 frames
    frames = skipped = failed_in_a_row = 0
    with _open_source(args) as source, make_backend(name, bundle, **opts) as backend:
        print("live: %s, %s backend, head %s (%d classes)" % (source.name, name, args.head, head.num_classes),
              file=sys.stderr, flush=True)
        pipe = LivePipeline(bundle, backend)
        try:
            while args.frames is None or frames < args.frames:
                try:
                    res = pipe.step(source, head, k=args.top)
                except ImageError as e:
                    skipped += 1
                    failed_in_a_row += 1
                    print("warning: %s" % e, file=sys.stderr, flush=True)
                    if failed_in_a_row >= source.max_failures:
                        raise BnnError("%s (%d frames in a row)" % (e, failed_in_a_row)) from None
                    continue
                failed_in_a_row = 0
                frames += 1
                total.add(res.seconds)
                fps = pipe.timer.fps()
                if args.table:
                    print("%6d  %s  %s" % (frames, "  ".join("%-16s %5.1f%%" % (names[i][:16], 100 * p)
                                                              for i, p in zip(res.top, res.prob)),
                                           "%.1f frames/s" % fps if fps else ""), flush=True)
                else:
                    _print_json({"frame": frames, "top": _top_entries(head, names, res.top, res.prob),
                                 "fps": _r(fps, 2), "backend": name})
        except KeyboardInterrupt:
            pass  # Ctrl-C ends a live run; the summary still comes
    host_fps = total.host_fps()
    _print_json({"command": "live", "frames": frames, "skipped": skipped, "backend": name, "source": source.name,
                 "fps": _r(total.fps(), 2), "host_fps": _r(host_fps, 1), "ms": _stage_ms(total),
                 "stages": list(STAGES)})
    return 1 if skipped else 0


def _prompt(text):
    """Wait for Enter on an interactive terminal; go on at once when stdin is not one (scripts, tests)."""
    print(text, file=sys.stderr, flush=True)
    if sys.stdin is not None and sys.stdin.isatty():
        sys.stdin.readline()


def cmd_teach(args):
    from .atomic import output_lock
    from .heads import load_head
    from .manifest import check_replaceable_file
    from .sources import check_class_name

    _positive("--frames-per-class", args.frames_per_class)
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        raise BnnError("%s: is a directory; --out takes the head file to write" % out)
    classes = [check_class_name(c) for c in args.classes]
    examples = args.examples or (out[:-4] if out.endswith(".npz") else out) + "-examples"
    bundle = _load_bundle(args)
    name, opts = _backend_choice(args, bundle)
    with output_lock(out):
        check_replaceable_file(out, load_head, "head")  # before the camera: a user's file is refused, not replaced
        return _teach(args, out, classes, examples, bundle, name, opts)


def _teach(args, out, classes, examples, bundle, name, opts):
    from .backends import make_backend
    from .sources import CameraSource
    from .teach import Teacher

    with _open_source(args) as source, make_backend(name, bundle, **opts) as backend:
        teacher = Teacher(bundle, backend, source, examples_dir=examples, variant=args.head_type)
        if teacher.resumed:
            print("teach: %d examples of %s from %s" % (teacher.resumed, ", ".join(teacher.store.classes), examples),
                  file=sys.stderr, flush=True)
        try:
            for c in classes:
                if isinstance(source, CameraSource):
                    _prompt("teach: show '%s' to %s and press Enter" % (c, source.name))
                print("teach: " + teacher.capture(c, args.frames_per_class), file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            counts = teacher.store.counts()
            print("teach: stopped; the examples captured so far are kept in %s (%s): run teach again to go on"
                  % (teacher.store.folder, ", ".join("%s: %d" % kv for kv in sorted(counts.items())) or "none"),
                  file=sys.stderr, flush=True)
            raise
        head = teacher.train()
    teacher.save_head(out)
    info = head.meta["train"]
    _print_json({"command": "teach", "head": out, "examples_dir": teacher.store.folder, "backend": name,
                 "source": source.name, "classes": head.classes, "examples": teacher.store.counts(),
                 "resumed": teacher.resumed, "variant": head.variant, "val_top1": _r(info.get("val_top1")),
                 "train_seconds": _r(teacher.train_seconds, 3)})
    return 0


def _name_list(text, what, choices=None):
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise BnnError("%s: expected a comma-separated list, got %r" % (what, text))
    if choices is not None:
        bad = [s for s in items if s not in choices]
        if bad:
            raise BnnError("%s: unknown %s (choose from %s)" % (what, ", ".join(bad), ", ".join(choices)))
    return items


def cmd_bench(args):
    from .backends import BACKENDS, backend_options
    from .benchmark import BenchConfig, run_bench

    try:
        sizes = [int(s) for s in _name_list(args.batch_sizes, "--batch-sizes")]
    except ValueError:
        raise BnnError("--batch-sizes: expected positive integers like 1,8,64, got %r" % args.batch_sizes) from None
    backends = _name_list(args.backends, "--backends", tuple(BACKENDS)) if args.backends else None
    opts = {name: backend_options(name, args) for name in BACKENDS}
    if args.seconds is not None and not args.seconds > 0:
        raise BnnError("--seconds: must be positive, got %r" % args.seconds)
    cfg = BenchConfig(batch_sizes=sizes, backends=backends, quick=args.quick, min_seconds=args.seconds,
                      backend_options=opts)
    bundle = _load_bundle(args)
    _batch_fits("--batch-sizes", sizes, bundle)
    result = run_bench(bundle, cfg, progress=lambda msg: print("bench: " + msg, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


COMMANDS = {"fit": cmd_fit, "eval": cmd_eval, "predict": cmd_predict, "live": cmd_live, "teach": cmd_teach,
            "bench": cmd_bench}
