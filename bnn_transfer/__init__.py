"""The import namespace of bnn-transfer's stages in a checkout: ``bnn_transfer.train`` is ``train/``.

An installed copy (``pip install .``) puts the stages inside a ``bnn_transfer/`` folder of its own
(pyproject.toml maps each one there), so that ``host``, ``train``, ``export``, ``bench``... cannot
clash with other distributions of those names. In the checkout the stages stay top-level folders, run
as ``python -m train`` from the repo root; this package makes ``bnn_transfer.<stage>`` name the same
files, so the stages import each other by one name in both. It is not part of the wheel.

host/ imports itself only relatively: the bundle's copy of it runs on the board as ``python3 -m host``.
"""

import os

__path__ = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
