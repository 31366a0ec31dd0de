"""A tiny trained run and its export, made once for the fault-injection suite."""

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    from bnn_transfer.train.calibrate import calibrated_random_model
    from bnn_transfer.train.models import ModelConfig
    from tests.export.test_export import write_run

    tmp = tmp_path_factory.mktemp("faults-run")
    model = calibrated_random_model(ModelConfig(preset="tiny", num_classes=3), seed=1)
    return write_run(tmp / "run", model, ["a", "b", "c"])


@pytest.fixture(scope="session")
def export_dir(tiny_run, tmp_path_factory):
    """(folder, run, export directory); the export's own folder, so tests may rewrite it."""
    from bnn_transfer.export.backbone import ExportConfig, export_backbone

    tmp = tmp_path_factory.mktemp("faults-export")
    export_backbone(ExportConfig(run=tiny_run, out=str(tmp / "export"), verify_images=2), progress=lambda s: None)
    return tmp, tiny_run, tmp / "export"
