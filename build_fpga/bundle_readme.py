"""The README of a deploy bundle: what it holds, and how to copy it to a PYNQ board and run it there.

What it says about PYNQ comes from the sources of PYNQ's images (Xilinx/PYNQ tags v2.7.0, v3.0.1,
v3.1 and the v4.0.0 release):

- every image since 2.7 keeps PYNQ's Python in a virtual environment, ``/usr/local/share/pynq-venv``,
  made from the system ``python3`` with ``--system-site-packages`` and activated by
  ``/etc/profile.d/pynq_venv.sh``, which login shells source (``sdbuild/packages/
  python_packages_focal/qemu.sh`` in 2.7: Ubuntu 20.04, Python 3.8; ``python_packages_jammy`` in
  3.0/3.1: 22.04, 3.10; ``python_packages_noble`` in 4.0: 24.04, 3.12);
- Jupyter runs as root (a systemd service whose ``start_jupyter.sh`` sources ``/etc/environment``
  and ``/etc/profile.d/*.sh``, then ``jupyter notebook --allow-root``) on port 9090, password
  ``xilinx``, serving ``$PYNQ_JUPYTER_NOTEBOOKS`` = ``/home/xilinx/jupyter_notebooks``
  (``sdbuild/packages/jupyter/qemu.sh``, ``/etc/environment``); checked in 2.7 and 3.x, not on a
  4.0 image;
- PYNQ 4.0 has no Pynq-Z1/Z2 images (release notes, PR #1577): 3.1 is their last;
- Avnet/Ultra96-PYNQ has images for 2.7 and 3.0.1 (its tags);
- Xilinx/Kria-PYNQ installs PYNQ on AMD's Ubuntu image for the KV260 (user ``ubuntu``): its v1.0
  PYNQ 2.7 on 20.04, its v3.0 PYNQ 3.0.1 on 22.04, the same virtual environment, ``BOARD=KV260`` and
  ``PYNQ_JUPYTER_NOTEBOOKS`` exported in ``/etc/profile.d/pynq_venv.sh`` (a folder in root's home:
  its install.sh resolves ``~`` after setting ``HOME`` to root's).

PYNQ's names for the boards and how ``host/`` finds the board it runs on: ``host/boards.py``.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from bnn_transfer.host.artifacts import BUNDLE_MANIFEST
from bnn_transfer.host.boards import pynq_names

# (image, Ubuntu, Python, our boards with an image of it and whose), from the sources above
PYNQ_IMAGES = (
    ("2.7", "20.04", "3.8", "pynq-z1, pynq-z2, zcu104; ultra96 (Avnet's image); kv260 (Kria-PYNQ 1.0)"),
    ("3.0, 3.1", "22.04", "3.10", "pynq-z1, pynq-z2 (3.1 is their last), zcu104; ultra96 (Avnet's 3.0.1); "
                                  "kv260 (Kria-PYNQ 3.0)"),
    ("4.0", "24.04", "3.12", "zcu104"),
)
JUPYTER_DIR = "/home/xilinx/jupyter_notebooks"
PYNQ_VENV = "/usr/local/share/pynq-venv"

VIVADO_NOTES = """\
## Building the bitstream (needs Vivado)

finn-plus 1.6.1 does not pin one Vivado release in code: its package description asks for
"Vivado, Vitis, and Vitis HLS (2022.2 or 2024.2)"; `finn.util.basic.get_vivado_version` reads the
version from the `XILINX_VIVADO` path, and its code switches behaviour at 2024.2 (e.g. `vitis-run`
replaces `vitis_hls` after 2024.2 in `finn/util/hls.py`). Use 2022.2 or 2024.2. Then:

1. `source <Xilinx>/Vivado/<version>/settings64.sh` (and Vitis HLS's): `vivado` and `vitis_hls` on
   PATH, `XILINX_VIVADO` and `XILINX_HLS` set.
2. `finn deps update --accept-defaults` once: fetches finn-hlslib (HLS layers) and the board files
   (Pynq-Z1/Z2, Ultra96, KV260, ...) into FINN's dependency folder.
3. Re-run the same `python -m build_fpga ...` command without `--estimate-only`. A pre-flight names
   every missing piece first (one `error:` line each, nothing run); the environment FINN's own
   launcher would set (`FINN_BUILD_DIR`, `FINN_CUSTOM_HLS`, `LD_LIBRARY_PATH`, ...) is set by
   `build_fpga` itself; pick the disk with `--build-dir` (a synthesis run needs several GB).
4. It repeats the estimate steps (seconds), then runs FINN's hardware steps (HLS IP generation and
   FIFOs (`--fifo`), stitched IP, Zynq shell synthesis and bitstream, PYNQ driver), one terminal line
   per step, FINN's log in `<build dir>/hw-<key>/build_dataflow.log`, and puts `bitfile/finn-accel.bit`,
   `bitfile/finn-accel.hwh` and `driver/` into this bundle.
"""


def notebook_titles(folder: str) -> List[Tuple[str, str]]:
    """(file name, first markdown heading) of each notebook in ``folder``, by name; [] without the folder."""
    if not os.path.isdir(folder):
        return []
    out = []
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".ipynb")):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            cells = json.load(f).get("cells", [])
        lines = [line for c in cells if c.get("cell_type") == "markdown" for line in "".join(c["source"]).splitlines()]
        out.append((name, next((line.lstrip("#").strip() for line in lines if line.startswith("#")), "")))
    return out


def _mb(size: int) -> str:
    return "%s MB" % format(size / 1e6, ".1f")


def _board_lines(board: str, folder: str, board_part: Sequence[str]) -> List[str]:
    """How to get the board part of the bundle to the board and run ``host`` there."""
    dest = "%s/%s" % (JUPYTER_DIR, folder)
    copy = " ".join(board_part)
    lines = [
        "## On the board",
        "",
        "### Copy it",
        "",
        "The board needs everything but `pc/`. From this folder on the PC, as user `xilinx` (password "
        "`xilinx`) into the folder PYNQ's Jupyter shows, `%s`:" % JUPYTER_DIR,
        "",
        "```bash",
        "ssh xilinx@<board-ip> mkdir -p %s" % dest,
        "scp -r %s xilinx@<board-ip>:%s/" % (copy, dest),
        "```",
        "",
        "(`rsync -a --exclude pc/ ./ xilinx@<board-ip>:%s/` does the same where both machines have rsync.) "
        "The manifest lists `pc/`'s files too: `host` checks them where they are and does without them "
        "where they are not." % dest,
        "",
    ]
    if board == "kv260":
        lines += [
            "Kria-PYNQ (PYNQ installed on AMD's Ubuntu image for the KV260) has no user `xilinx`: log in as "
            "`ubuntu`, copy the same files to `~/%s`, then put them where its Jupyter looks: "
            "`sudo -i`, then `cp -r ~ubuntu/%s \"$PYNQ_JUPYTER_NOTEBOOKS\"/` (a folder in root's home with "
            "Kria-PYNQ's current install script); in the commands below, that folder stands for `%s`."
            % (folder, folder, JUPYTER_DIR),
            "",
        ]
    if board == "ultra96":
        lines += [
            "Avnet's Ultra96 images call both the V1 and the V2 `Ultra96` (`$BOARD`): this bundle is for the "
            "V2, so on a V1 the bitstream does not fit the board even though `host` accepts it.",
            "",
        ]
    lines += [
        "### Run it",
        "",
        "`host` and the notebooks need PYNQ's Python and root, as PYNQ's own Jupyter has them: the `pynq` "
        "package (in PYNQ's virtual environment only) maps the accelerator's registers, allocates DMA "
        "memory and loads the bitstream. Every PYNQ image since 2.7 keeps its Python in `%s`, "
        "activated by `/etc/profile.d/pynq_venv.sh`:" % PYNQ_VENV,
        "",
        "| PYNQ image | Ubuntu | Python | images for (our board names) | terminal | Jupyter |",
        "|---|---|---|---|---|---|",
    ]
    for image, ubuntu, python, boards in PYNQ_IMAGES:
        jupyter = ("`http://<board-ip>:9090`, password `xilinx`, shows `%s`; kernels run as root in the "
                   "environment" % JUPYTER_DIR) if image != "4.0" else "as for 3.x (not checked on a 4.0 image)"
        lines.append("| %s | %s | %s | %s | `sudo -i`, then `cd` to the bundle | %s |"
                     % (image, ubuntu, python, boards, jupyter))
    lines += [
        "",
        "`sudo -i` opens root's login shell, which activates the environment and sets `$BOARD`; a plain "
        "`sudo python3` runs the system Python without PYNQ's packages (sudo resets `PATH`). A root shell "
        "opened otherwise gets the environment with `source /etc/profile.d/pynq_venv.sh`. In root's shell "
        "`~` is `/root`, so name your folders in full:",
        "",
        "```bash",
        "ssh xilinx@<board-ip>",
        "sudo -i",
        "cd %s" % dest,
        "python3 -m host fit --bundle . --dataset folder --data-dir /home/xilinx/my-images --out head.npz",
        "python3 -m host eval --bundle . --dataset folder --data-dir /home/xilinx/my-images --head head.npz",
        "python3 -m host predict --bundle . --head head.npz /home/xilinx/photo.jpg",
        "```",
        "",
        "`--data-dir` holds one sub-folder per class (or `train/` and `test/` with class folders). Every "
        "line `host` prints names the backend that computed the features (`\"backend\": \"pynq\"` is the FPGA).",
        "",
        "In Jupyter, open `%s/notebooks/` (order and settings: `notebooks/README.md`; run one at a time: "
        "each loads the bitstream):" % folder,
        "",
    ]
    return lines


def _notebook_lines(notebooks: Sequence[Tuple[str, str]]) -> List[str]:
    if not notebooks:
        return ["(this bundle carries no notebooks)", ""]
    return ["- `%s`%s" % (name, ": " + title if title else "") for name, title in notebooks] + [""]


def _missing_lines(board: str, hardware: bool) -> List[str]:
    pynq_name = next(k for k, v in pynq_names().items() if v == board)
    return [
        "### When something is missing",
        "",
        "`host` knows it runs on a PYNQ board from `$BOARD`, or where a plain `sudo` dropped it, from "
        "`/proc/device-tree/chosen/pynq_board` or `/etc/xocl.txt`. It refuses a bundle built for another "
        "board (PYNQ's names %s stand for ours %s; this bundle is for the `%s`), and there the FPGA is the "
        "default: a `pynq` that cannot be imported, a bundle without a bitstream or an overlay that does not "
        "load is one `error:` line and exit code 2, never a quiet switch to the emulator:"
        % (", ".join(pynq_names()), ", ".join(pynq_names().values()), pynq_name),
        "",
        "- `cannot import the pynq package`: this is not PYNQ's Python: `sudo -i` as above (in a notebook: "
        "use PYNQ's Jupyter at port 9090, not another one). `python3 -c 'import pynq; print(pynq.__file__)'` "
        "shows which Python has it;",
        "- `bundle has no bitfile`: %s;" % (
            "the copy left out `bitfile/`: copy it again" if hardware else
            "this bundle was built without Vivado (see below): there is no bitstream to run yet"),
        "- `cannot load the overlay`: not root (`sudo -i`), or a bitstream for another board.",
        "",
        "`--backend emulator` (notebooks: `BACKEND = \"emulator\"` in their first code cell) computes the same "
        "features in numpy, without the FPGA and much slower; `--board ''` skips the board check.",
        "",
    ]


def readme(manifest: Dict, hardware: bool, build_dir: Optional[str], root: str) -> str:
    """README.md of the bundle being written in ``root``: ``manifest`` before its hashes."""
    board = manifest["board"]
    folder = "bnn-%s-%s" % (manifest["preset"], board)
    entries = sorted(set(os.listdir(root)) | {"README.md", BUNDLE_MANIFEST})
    board_part = [e for e in entries if e != "pc"]
    pc = os.path.join(root, "pc")
    pc_files = sorted(os.listdir(pc)) if os.path.isdir(pc) else []
    pc_size = sum(os.path.getsize(os.path.join(pc, f)) for f in pc_files)
    n = manifest["preprocess"]["input_size"]
    lines = [
        "# Deploy bundle: %s preset on %s" % (manifest["preset"], board),
        "",
        "Frozen binary backbone (%d features from %dx%d RGB images) for the %s (%s, %s MHz), built by "
        "`python -m build_fpga`. `manifest.json` lists every file with its sha256; the host runtime "
        "refuses a bundle whose files changed." % (manifest["feature_width"], n, n, board, manifest["part"],
                                                    format(manifest["clock_mhz"], "g")),
        "",
        "| file | what | read by |",
        "|---|---|---|",
        "| `manifest.json` | board, preset, preprocessing, feature width, FINN's io shapes, sha256 of every file "
        "| `host` |",
        "| `emulator.npz` | binary weights + integer thresholds read from FINN's final graph (bit-exact numpy "
        "model) | `host`, `--backend emulator` |",
        "| `bitfile/` | %s | `host` on the board |" % ("`finn-accel.bit` + `.hwh` for PYNQ" if hardware
                                                       else "absent: no Vivado at build time (see below)"),
        "| `report/` | FINN's estimates (`estimates.json`, `README.md`, `layers.png`), `folding_config.json`, "
        "`bitexact.json`, FINN's raw reports in `finn/` | you |",
        "| `host/`, `notebooks/` | the board runtime (numpy + PIL; pynq on the board) and Jupyter notebooks | "
        "Python, Jupyter |",
    ]
    if pc_files:
        lines.append("| `pc/` | %s (%s): the QONNX graph for the `onnx` backend, a slow reference | a PC only: "
                     "it stays off the board |" % (", ".join("`%s`" % f for f in pc_files), _mb(pc_size)))
    lines += [
        "",
        "Estimated throughput: **%s img/s** at %s MHz (see `report/README.md`)." % (
            format(round(manifest["estimates"]["fps"]), ","), format(manifest["clock_mhz"], "g")),
        "",
    ]
    lines += _board_lines(board, folder, board_part)
    lines += _notebook_lines(notebook_titles(os.path.join(root, "notebooks")))
    lines += _missing_lines(board, hardware)
    lines += ["On a PC, the same commands run from this folder with `python -m host ...` (numpy and pillow "
              "needed; the emulator is the default there).", ""]
    if not hardware:
        lines.append(VIVADO_NOTES)
    if build_dir:
        lines += [
            "## FINN's working folder",
            "",
            "FINN's intermediate models, HLS C++/RTL sources (with `--hw-codegen`) and logs were kept in "
            "`%s` (not part of the bundle: they are large and hold absolute paths of the build machine). "
            "A Vivado user re-runs the build command with `--build-dir` pointing there: a hardware build "
            "(`hw-<key>/`) stopped midway resumes from its last finished FINN step (`--clean` starts "
            "over)." % build_dir,
            "",
        ]
    else:
        lines += ["FINN's intermediate models were built in a temporary folder and removed (pass "
                  "`--build-dir DIR` or `--hw-codegen` to keep them).", ""]
    return "\n".join(lines)
