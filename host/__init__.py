"""bnn-transfer host runtime: the board side of the flow.

Lowest layer of the project. Module-level imports are numpy and the standard library only
(PIL where images are decoded, ``pynq`` lazily inside the pynq backend), and the sources
parse as Python 3.8, because PYNQ images for the Pynq-Z1/Z2 ship Python 3.8-3.10 with numpy 1.2x.
"""
