"""proj's app as libraries that renamed the private names of the internals in PROJ_TEST_RENAMED would run it.

PROJ_TEST_RENAMED: internal keys (proj.compat), comma-separated. What proj checks as the app is imported
(the confirm wait, installed by proj.celery) is undone and checked again with the names renamed.
"""

import os

from proj import compat, confirms
from proj.celery import app

confirms.uninstall()
compat.reset()
for _key in filter(None, os.environ.get("PROJ_TEST_RENAMED", "").split(",")):
    _name = compat._NAMES[_key]
    setattr(compat, _name, compat.renamed(getattr(compat, _name)))
confirms.install()

__all__ = ("app",)
