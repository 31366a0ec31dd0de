"""demo.stages: the flow's commands side by side, each with its own log; a failure names its stage and log."""

import pytest

from bnn_transfer.demo.stages import run_side_by_side
from bnn_transfer.host.errors import BnnError


def test_side_by_side_stages_keep_their_order_and_their_logs(tmp_path):
    stages = [("a", ["host", "--help"]), ("b", ["host", "fit", "--help"]), ("c", ["export", "--help"])]
    lines = []
    results = run_side_by_side(stages, 2, str(tmp_path), lines.append)
    assert results == [None, None, None]  # none printed a JSON object
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log", "b.log", "c.log"]
    assert {"[a]", "[b]", "[c]"} <= set(lines)


def test_a_failing_stage_is_named_with_its_log(tmp_path):
    stages = [("ok", ["host", "--help"]), ("broken", ["no_such_stage_for_the_demo"])]
    with pytest.raises(BnnError, match=r"stage failed \(exit 1\): python -m no_such_stage_for_the_demo \(its log: "
                                       r".*broken\.log\)"):
        run_side_by_side(stages, 2, str(tmp_path), lambda msg: None)
    assert "No module named bnn_transfer.no_such_stage_for_the_demo" in (tmp_path / "broken.log").read_text()
