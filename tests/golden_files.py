"""Golden files: deterministic outputs kept in tests/golden/ and copied into README.md between markers.

A test hands its output to ``Golden.check(name, text)``. Normally the output must equal
``tests/golden/<name>`` and README.md's block ``<!-- golden:<name> -->`` ... ``<!-- /golden:<name> -->``
must hold the same text, so every figure there comes from a run of the test. ``pytest
--update-golden`` rewrites both from this run instead (in the manner of Brevitas'
``pretrained_accuracy_reference.json``): review the diff, then commit it.
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.path.join(ROOT, "tests", "golden")
README = os.path.join(ROOT, "README.md")


def _block(name):
    n = re.escape(name)
    return re.compile(r"(<!-- golden:%s -->\n)(.*?)(<!-- /golden:%s -->)" % (n, n), re.S)


def readme_block(name, readme_text):
    m = _block(name).search(readme_text)
    return None if m is None else m.group(2)


class Golden:
    def __init__(self, update):
        self.update = update

    def check(self, name, text):
        path = os.path.join(GOLDEN_DIR, name)
        with open(README, encoding="utf-8") as f:
            readme = f.read()
        assert readme_block(name, readme) is not None, "README.md has no block <!-- golden:%s -->" % name
        if self.update:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            with open(README, "w", encoding="utf-8") as f:
                f.write(_block(name).sub(lambda m: m.group(1) + text + m.group(3), readme))
            return
        hint = "; if the change is intended, rerun with pytest --update-golden and commit the diff"
        with open(path, encoding="utf-8") as f:
            assert text == f.read(), "output differs from tests/golden/%s%s" % (name, hint)
        assert readme_block(name, readme) == text, "README.md's golden:%s block differs from the file%s" % (name, hint)

    def quote(self, name, text):
        """README.md's block ``name`` must hold ``text``, a generated file committed elsewhere (the full demo's
        results): checked, or with --update-golden copied into the block."""
        with open(README, encoding="utf-8") as f:
            readme = f.read()
        assert readme_block(name, readme) is not None, "README.md has no block <!-- golden:%s -->" % name
        if self.update:
            with open(README, "w", encoding="utf-8") as f:
                f.write(_block(name).sub(lambda m: m.group(1) + text + m.group(3), readme))
            return
        assert readme_block(name, readme) == text, ("README.md's golden:%s block differs from the generated file; "
                                                    "rerun with pytest --update-golden and commit the diff" % name)
