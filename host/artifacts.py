"""The file names of every stage's artifacts, in one place: the stage that writes a file and every
stage that reads it name it from here (ARCHITECTURE.md describes what each holds)."""

CHECKPOINT = "checkpoint.pt"  # train/: the weights, torch.load(weights_only=True)
RUN_MANIFEST = "run.json"  # train/: the run's manifest (its config, metrics, the checkpoint's sha256)
EXPORT_MANIFEST = "export.json"  # export/: the frozen backbone's manifest
BACKBONE = "backbone.onnx"  # export/: the frozen backbone as QONNX
BUNDLE_MANIFEST = "manifest.json"  # build_fpga/: the deploy bundle's manifest
EMULATOR = "emulator.npz"  # build_fpga/: the bundle's bit-exact numpy model of the accelerator
PC_DIR = "pc"  # build_fpga/: the part of a bundle only a PC reads (the board copy leaves it out)
