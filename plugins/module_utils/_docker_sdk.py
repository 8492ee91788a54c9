# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Docker SDK, imported one way for every module that talks to Docker.

docker 5 (python3-docker on Debian 12) imports distutils.spawn for one function. There, setuptools' (66)
distutils-precedence.pth hooks `import distutils` and hands out setuptools' own copy, which imports setuptools and
pkg_resources first: about 0.2 s of every module run that uses Docker (a vllm_health run on a Debian 12 lab host took
0.48-0.69 s with the hook, 0.31-0.46 s without). The interpreter's own distutils serves that function the same, so
where the interpreter has one (Python 3.11 and older, with python3-distutils), the hook is stepped around for the
SDK's import only. Anywhere else the SDK is imported as it is."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import importlib.util
import sys
import traceback


def _step_around_setuptools_distutils():
    """Take setuptools' distutils hooks off sys.meta_path when the interpreter's own distutils can stand in.
    Returns the (position, hook) pairs taken off, for _put_back."""
    if "distutils" in sys.modules:
        return []
    hooks = [(position, finder) for position, finder in enumerate(sys.meta_path)
             if type(finder).__module__ == "_distutils_hack"]
    for _position, finder in reversed(hooks):
        sys.meta_path.remove(finder)
    try:
        own = importlib.util.find_spec("distutils") is not None
    # Whatever it is, the hooks go back and the SDK is imported as it is.
    except Exception:  # pylint: disable=broad-except
        own = False
    if not own:
        _put_back(hooks)
        return []
    return hooks


def _put_back(hooks):
    for position, finder in hooks:
        # setuptools, imported meanwhile, may have put its hook back itself.
        if finder not in sys.meta_path:
            sys.meta_path.insert(position, finder)


def _import_sdk():
    import docker  # noqa: F401 (imported for the names below)
    import docker.errors  # noqa: F401
    import docker.models.containers  # noqa: F401
    import docker.types  # noqa: F401
    return docker


_hooks = _step_around_setuptools_distutils()
try:
    try:
        docker = _import_sdk()
    except ImportError as exc:
        # Only a distutils the interpreter's own could not stand in for is retried (Debian's libpython3.11-stdlib
        # ships distutils' __init__ and version without python3-distutils' spawn): a missing SDK is missing either way.
        if not _hooks or (exc.name or "").partition(".")[0] != "distutils":
            raise
        # Whatever the interpreter's distutils lacked: forget the half-imported SDK and import it as it is.
        for _name in [name for name in sys.modules if name == "docker" or name.startswith("docker.")
                      or name == "distutils" or name.startswith("distutils.")]:
            del sys.modules[_name]
        _put_back(_hooks)
        _hooks = []
        docker = _import_sdk()
except ImportError:
    docker = None
    DOCKER_IMPORT_ERROR = traceback.format_exc()
else:
    DOCKER_IMPORT_ERROR = None
finally:
    _put_back(_hooks)
