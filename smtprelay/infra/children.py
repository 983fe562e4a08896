"""Child processes that run this same smtprelay: the transform workers and the SMTP
worker processes."""

from __future__ import annotations

import os
import site
from pathlib import Path

# Where this smtprelay is imported from, so a child runs the same code even from a
# checkout that is not installed.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def child_environment() -> dict[str, str]:
    """The relay's environment; from a checkout, with the checkout first on the path.

    An installed smtprelay needs nothing: the child runs the same interpreter and
    finds it where the relay did. A site-packages directory must not go on PYTHONPATH,
    which comes before the standard library (a backport there would shadow it). Start
    children with `python -P -m ...`: -m would put the working directory first on the
    path, so a relay started inside another checkout (or next to a stray pickle.py)
    would run that code; unlike -I, -P keeps PYTHONPATH and site-packages.
    """
    env = dict(os.environ)
    installed = {str(Path(path).resolve())
                 for path in (*site.getsitepackages(), site.getusersitepackages())}
    if PACKAGE_ROOT not in installed:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (PACKAGE_ROOT,
                                                          env.get("PYTHONPATH"))))
    return env
