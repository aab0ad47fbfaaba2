"""Run Cloudflare Python Worker projects unchanged: ``perdure dev PATH`` (see :mod:`.runner`).

A project is a directory holding ``wrangler.json``, ``wrangler.jsonc`` or ``wrangler.toml``
(:mod:`.wrangler`) whose ``main`` module imports ``workers`` (:mod:`.sdk`, installed only in the
process that runs the project); ``self.env`` holds its bindings (:mod:`.bindings`).
"""

from .runner import Project, ProjectError, is_project, load_project

__all__ = ["Project", "ProjectError", "is_project", "load_project"]
