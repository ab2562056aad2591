"""The package is written for Python 3.9 (pyproject's requires-python): every module parses with
3.9's grammar, and annotations are postponed so newer typing syntax in them is never evaluated."""

import ast
import pathlib
import unittest

import topup

PACKAGE = pathlib.Path(topup.__file__).resolve().parent


class Compat(unittest.TestCase):
    def test_every_module_parses_as_python_3_9(self):
        files = sorted(PACKAGE.glob("*.py"))
        self.assertGreater(len(files), 5)
        for f in files:
            tree = ast.parse(f.read_text(), str(f), feature_version=(3, 9))
            body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
            annotated = any(isinstance(n, (ast.AnnAssign, ast.arg)) and getattr(n, "annotation", None) is not None
                            or isinstance(n, ast.FunctionDef) and n.returns is not None for n in ast.walk(tree))
            future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                         and any(a.name == "annotations" for a in n.names) for n in body)
            if annotated and f.name != "__init__.py":
                self.assertTrue(future, f"{f.name}: add `from __future__ import annotations`")


if __name__ == "__main__":
    unittest.main()
