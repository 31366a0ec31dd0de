"""Golden files: deterministic outputs kept in tests/golden/ and copied into the docs between markers.

A test hands its output to ``Golden.check(name, text)``. Normally the output must equal
``tests/golden/<name>`` and the block ``<!-- golden:<name> -->`` ... ``<!-- /golden:<name> -->`` of the one
doc holding it (README.md or a stage's README, :data:`DOCS`) must hold the same text, so every figure
there comes from a run of the test. ``pytest --update-golden`` rewrites both from this run instead (in the
manner of Brevitas' ``pretrained_accuracy_reference.json``): review the diff, then commit it.
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.path.join(ROOT, "tests", "golden")
DOCS = [os.path.join(ROOT, *p.split("/")) for p in
        ("README.md", "ARCHITECTURE.md", "train/README.md", "build_fpga/README.md", "host/README.md")]


def _block(name):
    n = re.escape(name)
    return re.compile(r"(<!-- golden:%s -->\n)(.*?)(<!-- /golden:%s -->)" % (n, n), re.S)


def readme_block(name, readme_text):
    m = _block(name).search(readme_text)
    return None if m is None else m.group(2)


def _doc_with(name):
    """(path, text) of the one doc holding the block ``name``."""
    found = []
    for path in DOCS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if readme_block(name, text) is not None:
            found.append((path, text))
    assert len(found) == 1, "%d docs hold the block <!-- golden:%s --> (%s)" % (
        len(found), name, ", ".join(os.path.relpath(p, ROOT) for p, _ in found) or "none")
    return found[0]


def _rewrite(path, text, name, block):
    with open(path, "w", encoding="utf-8") as f:
        f.write(_block(name).sub(lambda m: m.group(1) + block + m.group(3), text))


class Golden:
    def __init__(self, update):
        self.update = update

    def check(self, name, text):
        path = os.path.join(GOLDEN_DIR, name)
        doc, readme = _doc_with(name)
        if self.update:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            _rewrite(doc, readme, name, text)
            return
        hint = "; if the change is intended, rerun with pytest --update-golden and commit the diff"
        with open(path, encoding="utf-8") as f:
            assert text == f.read(), "output differs from tests/golden/%s%s" % (name, hint)
        assert readme_block(name, readme) == text, "%s's golden:%s block differs from the file%s" % (
            os.path.relpath(doc, ROOT), name, hint)

    def quote(self, name, text):
        """The doc block ``name`` must hold ``text``, a generated file committed elsewhere (the full demo's
        results): checked, or with --update-golden copied into the block."""
        doc, readme = _doc_with(name)
        if self.update:
            _rewrite(doc, readme, name, text)
            return
        assert readme_block(name, readme) == text, ("%s's golden:%s block differs from the generated file; "
                                                    "rerun with pytest --update-golden and commit the diff"
                                                    % (os.path.relpath(doc, ROOT), name))
