"""host/ on PYNQ 4.0 (Ubuntu 24.04, Python 3.12): nothing Python 3.12 removed from the standard library.

No Python 3.12 interpreter is installed here, so this reads the sources: imports of the modules PEP 594
and 3.12 dropped (distutils, imp, asynchat, asyncore, smtpd; and those 3.13 drops, which 3.12 already
warns about), and the names 3.12 removed from modules that remain. The parse itself is Python 3.8's
grammar (test_constraints.py), which every newer interpreter accepts.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = os.path.join(ROOT, "host")

# Removed in 3.12 (What's New in Python 3.12, "Removed"), and deprecated in 3.12 for removal in 3.13 (PEP 594).
REMOVED_MODULES = {
    "distutils": "3.12", "imp": "3.12", "asynchat": "3.12", "asyncore": "3.12", "smtpd": "3.12",
    "aifc": "3.13", "audioop": "3.13", "cgi": "3.13", "cgitb": "3.13", "chunk": "3.13", "crypt": "3.13",
    "imghdr": "3.13", "mailcap": "3.13", "msilib": "3.13", "nis": "3.13", "nntplib": "3.13", "ossaudiodev": "3.13",
    "pipes": "3.13", "sndhdr": "3.13", "spwd": "3.13", "sunau": "3.13", "telnetlib": "3.13", "uu": "3.13",
    "xdrlib": "3.13", "lib2to3": "3.13",
}
# Names removed from modules that still exist (What's New in Python 3.12, "Removed").
REMOVED_NAMES = {
    ("configparser", "SafeConfigParser"), ("configparser", "readfp"), ("ssl", "wrap_socket"),
    ("ssl", "match_hostname"), ("locale", "format"), ("pkgutil", "ImpImporter"), ("pkgutil", "ImpLoader"),
    ("unittest", "findTestCases"), ("unittest", "makeSuite"), ("unittest", "getTestCaseNames"),
    ("io", "OpenWrapper"), ("typing", "io"), ("typing", "re"),
}
REMOVED_METHODS = {"assertEquals", "assertNotEquals", "assertItemsEqual", "assertRegexpMatches",
                   "assertRaisesRegexp", "failUnless", "failIf", "assert_"}


def _sources():
    for dirpath, dirnames, filenames in os.walk(HOST):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def problems(source):
    """Lines that would fail on Python 3.12 (or 3.13), one string each."""
    tree = ast.parse(source)
    modules = {}  # local name -> module, for `import x as y`
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                modules[a.asname or top] = a.name
                if top in REMOVED_MODULES:
                    out.append("line %d: import %s (removed in Python %s)" % (node.lineno, a.name,
                                                                              REMOVED_MODULES[top]))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in REMOVED_MODULES:
                out.append("line %d: from %s import ... (removed in Python %s)" % (node.lineno, node.module,
                                                                                   REMOVED_MODULES[top]))
            for a in node.names:
                if (node.module, a.name) in REMOVED_NAMES:
                    out.append("line %d: from %s import %s (removed in Python 3.12)" % (node.lineno, node.module,
                                                                                       a.name))
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and (modules.get(node.value.id), node.attr) in REMOVED_NAMES:
                out.append("line %d: %s.%s (removed in Python 3.12)" % (node.lineno, node.value.id, node.attr))
            elif node.attr in REMOVED_METHODS:
                out.append("line %d: .%s (removed in Python 3.12)" % (node.lineno, node.attr))
    return out


def test_the_scan_catches_what_it_should():
    assert problems("import distutils.util\n")
    assert problems("from distutils.version import LooseVersion\n")
    assert problems("import imp\n")
    assert problems("import asyncore as a\n")
    assert problems("import configparser\nc = configparser.SafeConfigParser()\n")
    assert problems("import ssl as s\ns.wrap_socket(x)\n")
    assert problems("from locale import format\n")
    assert problems("self.assertEquals(a, b)\n")
    assert not problems("import importlib.util\nimport configparser\nc = configparser.ConfigParser()\n")
    assert not problems("import ssl\nctx = ssl.create_default_context()\n")


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: os.path.relpath(p, ROOT))
def test_no_api_python_312_removed(path):
    with open(path, encoding="utf-8") as f:
        found = problems(f.read())
    assert not found, "%s:\n  %s" % (os.path.relpath(path, ROOT), "\n  ".join(found))
