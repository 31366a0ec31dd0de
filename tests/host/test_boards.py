"""PYNQ's board names and how host/ finds the board it runs on (host/boards.py)."""

import sys

import pytest
from fake_pynq import make_bundle

from bnn_transfer.build_fpga.boards import board_names
from bnn_transfer.host import boards
from bnn_transfer.host.backends import available_backends, default_backends, make_backend
from bnn_transfer.host.boards import our_board, pynq_board, pynq_names
from bnn_transfer.host.bundle import load_bundle
from bnn_transfer.host.errors import BnnError


@pytest.fixture
def off_board(monkeypatch):
    """No $BOARD and no board files: whatever machine runs the tests."""
    monkeypatch.delenv("BOARD", raising=False)
    monkeypatch.setattr(boards, "BOARD_FILES", ())


def test_every_board_we_build_for_has_its_pynq_name():
    assert sorted(pynq_names().values()) == sorted(board_names())


@pytest.mark.parametrize("name, ours", [
    ("Pynq-Z1", "pynq-z1"), ("Pynq-Z2", "pynq-z2"), ("Ultra96", "ultra96"), ("ZCU104", "zcu104"), ("KV260", "kv260"),
    ("pynq-z2", "pynq-z2"), (" PYNQ-Z2 ", "pynq-z2"), ("kv260", "kv260"),
])
def test_pynq_and_our_spellings_name_our_board(name, ours):
    assert our_board(name) == ours


@pytest.mark.parametrize("name", ["Unknown", "ZCU111", "KR260", "Ultra96-V3", ""])
def test_another_board_is_named_with_the_known_ones(name):
    with pytest.raises(BnnError, match=r"board %r is not one this flow builds for \(PYNQ names them Pynq-Z1, Pynq-Z2, "
                                       r"Ultra96, ZCU104, KV260; ours: pynq-z1, .*\); .*--board ''" % name):
        our_board(name)


def test_board_from_the_environment_then_the_device_tree_then_xocl(off_board, monkeypatch, tmp_path):
    tree, xocl = tmp_path / "pynq_board", tmp_path / "xocl.txt"
    monkeypatch.setattr(boards, "BOARD_FILES", (str(tree), str(xocl)))
    assert pynq_board() is None  # a PC
    xocl.write_text("KV260\n")  # Kria-PYNQ: no device tree entry
    assert pynq_board() == "KV260"
    tree.write_bytes(b"Pynq-Z2\0")  # the device tree's NUL-terminated string
    assert pynq_board() == "Pynq-Z2"
    monkeypatch.setenv("BOARD", "ZCU104")
    assert pynq_board() == "ZCU104"
    monkeypatch.setenv("BOARD", " ")  # empty: as if unset
    assert pynq_board() == "Pynq-Z2"


@pytest.mark.parametrize("pynq_name, ours", sorted(pynq_names().items()))
def test_a_bundle_is_checked_against_pynqs_name_of_the_board(tmp_path, pynq_name, ours):
    root = make_bundle(tmp_path / "b", board=ours)
    assert load_bundle(root, board=pynq_name).board == ours
    other = next(n for n in pynq_names() if n != pynq_name)
    with pytest.raises(BnnError, match=r"bundle was built for board %r, not %r" % (ours, other)):
        load_bundle(root, board=other)


def test_on_a_board_pynq_comes_first_even_where_it_cannot_run(off_board, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynq", None)  # a Python without PYNQ's packages
    bundle = load_bundle(make_bundle(tmp_path / "b"))
    assert available_backends(bundle) == default_backends(bundle) == ["emulator"]
    monkeypatch.setenv("BOARD", "Pynq-Z2")
    assert available_backends(bundle) == ["emulator"] and default_backends(bundle) == ["pynq", "emulator"]
    with pytest.raises(BnnError, match=r"cannot import the pynq package"):
        make_backend(default_backends(bundle)[0], bundle)
