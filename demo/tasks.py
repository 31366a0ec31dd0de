"""The demo's transfer tasks: the paper's three datasets' regimes of labels, on embedded generated data.

What Table 2 is about is scarce labels: Flowers102 has 10 training images per class in its official
split (20 with validation), CUB-200 about 30, MIT Indoor 67 about 80. Each task here is a disjoint
block of ``synthetic-transfer`` classes (``class_set``: combinations of shape, texture and colour
that pretraining never saw) with that many training images per class. The learning curve is one
task's classes at growing numbers of training images per class; its point at the task's own count is
the table's cell.
"""

from dataclasses import dataclass
from typing import Tuple

DATASET = "synthetic-transfer"
CLASSES = 10
TEST_PER_CLASS = 30  # 300 test images: one image is 1/3 point


@dataclass(frozen=True)
class Task:
    name: str  # the table's column
    like: str  # the paper's dataset whose regime it has
    class_set: int
    train_per_class: int

    def options(self, train_per_class=None, test_per_class=TEST_PER_CLASS):
        """The dataset options of this task (at another number of training images per class for the curve)."""
        return {"num_classes": CLASSES, "class_set": self.class_set,
                "n_train_per_class": self.train_per_class if train_per_class is None else train_per_class,
                "n_test_per_class": test_per_class}

    def key(self, train_per_class=None):
        """A file-name-safe id of the task at ``train_per_class`` images per class."""
        n = self.train_per_class if train_per_class is None else train_per_class
        return "%s-%d" % (self.name.lower(), n)


TASKS: Tuple[Task, ...] = (
    Task("Flowers-like", "Flowers102", 0, 10),
    Task("Birds-like", "CUB-200", 1, 30),
    Task("Indoor-like", "MIT Indoor 67", 2, 80),
)
CURVE_TASK = TASKS[2]
# The default run's curve reuses the Indoor-like cell (80) and adds cheap points below it; --curve adds
# the points that cost the most scratch training.
CURVE_POINTS = (5, 10, 20, 80)
FULL_CURVE_POINTS = (5, 10, 20, 40, 80, 120, 160)
