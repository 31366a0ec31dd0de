"""The paper's Table 2: its numbers, its columns (target datasets) and its rows.

What ``python -m train table2`` reproduces (``table2.py``) and reports beside ours (``table2_report.py``).
"""

from dataclasses import dataclass
from typing import Optional

# S. Leroux, S. Bohez, T. Verbelen, B. Vankeirsbilck, P. Simoens, B. Dhoedt, "Transfer Learning with
# Binary Neural Networks", NIPS 2017 workshop "Machine Learning on the Phone and other Consumer
# Devices", arXiv:1711.10761. Table 2, in % as printed: (top-1, top-5) per row and dataset.
PAPER_CITATION = ("Leroux et al., \"Transfer Learning with Binary Neural Networks\", NIPS 2017 workshop MLPCD, "
                  "arXiv:1711.10761, Table 2")
PAPER_TABLE2 = {
    "fp-scratch": {"flowers": (71.7, 90.5), "birds": (32.4, 57.2), "indoor": (29.7, 56.4)},
    "fp-finetuned": {"flowers": (85.4, 97.2), "birds": (50.4, 79.6), "indoor": (57.4, 86.8)},
    "binary-scratch": {"flowers": (63.2, 85.1), "birds": (13.8, 32.4), "indoor": (29.0, 54.9)},
    "binary-a": {"flowers": (80.6, 94.5), "birds": (33.9, 62.9), "indoor": (46.7, 77.4)},
    "binary-b": {"flowers": (84.0, 95.5), "birds": (36.7, 63.4), "indoor": (48.3, 78.6)},
}
# Same paper, section "Experiments": the ImageNet (ILSVRC2012) networks the rows are fine-tuned from.
PAPER_IMAGENET = {"fp": (57.0, 80.0), "binary": (42.0, 67.0)}


@dataclass(frozen=True)
class Target:
    key: str  # also the command-line flag (--flowers) and the paper's column key
    dataset: str  # host.datasets name
    title: str  # the paper's column title


TARGETS = (
    Target("flowers", "flowers102", "Flowers"),
    Target("birds", "cub200", "Birds"),
    Target("indoor", "indoor67", "Indoor scenes"),
)


@dataclass(frozen=True)
class Row:
    key: str
    group: str  # "FP" or "Binary", the paper's row groups
    label: str  # the paper's row title
    short: str  # x tick label of the plot
    precision: str
    head: str
    pretrained: Optional[str]  # precision of the ImageNet run it is fine-tuned from; None: from scratch


ROWS = (
    Row("fp-scratch", "FP", "trained from scratch", "FP scratch", "fp", "float", None),
    Row("fp-finetuned", "FP", "fine-tuned", "FP fine-tuned", "fp", "float", "fp"),
    Row("binary-scratch", "Binary", "trained from scratch", "binary scratch", "binary", "binary", None),
    Row("binary-a", "Binary", "(a) fine-tuned binary last layer", "binary (a)", "binary", "binary", "binary"),
    Row("binary-b", "Binary", "(b) fine-tuned FP last layer", "binary (b)", "binary", "float", "binary"),
)
PRETRAIN_HEADS = (("fp", "float"), ("binary", "binary"))


def row_group(precision):
    """The paper's row group of a network: "FP" or "Binary"."""
    return "FP" if precision == "fp" else "Binary"
