"""The ``treeopt`` command line: one module per group of verbs, shared options in
:mod:`treeopt.cli.options`; :mod:`treeopt.cli.app` owns the app and error handling.
"""

from treeopt.cli.app import app, main

__all__ = ["app", "main"]
