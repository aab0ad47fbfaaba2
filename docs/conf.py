"""Sphinx configuration of Perdure's documentation.

Sphinx, because the docstrings are reST with :class:/:func: roles that autodoc renders as
written; MyST for the Markdown pages; sphinx-click for the CLI reference; a local extension
(``_ext/openapi_doc.py``) for the REST reference from the OpenAPI document the server serves.
Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (warnings are errors).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

project = "Perdure"
author = "Perdure contributors"
copyright = "2026, Perdure contributors"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_click",
    "openapi_doc",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
html_theme = "furo"
html_title = "Perdure"
