"""_docker_sdk imports the Docker SDK with setuptools' distutils hook stepped around, where the interpreter has its own
distutils, and puts the hook back where it was; anywhere else it imports the SDK as it is, and a missing SDK is
reported (DOCKER_IMPORT_ERROR), never raised. A stand-in `docker` package records which meta path finders were in
place while it was imported."""

import importlib
import importlib.util
import sys

import pytest

MODULE = "ansible_collections.inferops.vllm.plugins.module_utils._docker_sdk"

FAKE_SDK = {
    "docker/__init__.py": (
        "import sys\n"
        "FINDERS_SEEN = [type(finder).__module__ for finder in sys.meta_path]\n"
        "if REFUSE_WITHOUT_HOOK and '_distutils_hack' not in FINDERS_SEEN:\n"
        "    raise ModuleNotFoundError('No module named distutils.spawn', name='distutils.spawn')\n"
    ),
    "docker/errors.py": "class DockerException(Exception):\n    pass\n",
    "docker/models/__init__.py": "",
    "docker/models/containers.py": "",
    "docker/types.py": "",
}


class SetuptoolsHook:
    """Stands for _distutils_hack.DistutilsMetaFinder: found by its module's name, it finds nothing itself."""

    def find_spec(self, fullname, path, target=None):
        return None


SetuptoolsHook.__module__ = "_distutils_hack"


def _swapped(name):
    return name in ("docker", "distutils", MODULE) or name.startswith(("docker.", "distutils."))


@pytest.fixture
def sdk_dir(tmp_path, monkeypatch):
    """The stand-in SDK first on sys.path, and the modules it replaces out of sys.modules until the test ends."""
    saved = {name: module for name, module in sys.modules.items() if _swapped(name)}
    # A fresh import also sets the package's attribute: the modules imported before the test must find the old one.
    package = importlib.import_module(MODULE.rpartition(".")[0])
    monkeypatch.setattr(package, "_docker_sdk", getattr(package, "_docker_sdk", None), raising=False)

    def make(refuse_without_hook=False, present=True):
        if present:
            for name, text in FAKE_SDK.items():
                path = tmp_path / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text.replace("REFUSE_WITHOUT_HOOK", repr(refuse_without_hook)))
        monkeypatch.syspath_prepend(str(tmp_path))
        if not present:
            # A real SDK in this virtualenv must not answer for the missing one.
            monkeypatch.setattr(sys, "path", [str(tmp_path)] + [p for p in sys.path if "site-packages" not in p])
        for name in saved:
            del sys.modules[name]
        importlib.invalidate_caches()

    yield make
    for name in [name for name in sys.modules if _swapped(name)]:
        del sys.modules[name]
    sys.modules.update(saved)


@pytest.fixture
def hook(monkeypatch):
    finder = SetuptoolsHook()
    monkeypatch.setattr(sys, "meta_path", [sys.meta_path[0], finder] + sys.meta_path[1:])
    return finder


def interpreter_distutils(monkeypatch, present):
    real = importlib.util.find_spec

    def find_spec(name, package=None):
        if name == "distutils":
            return object() if present else None
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def load():
    return importlib.import_module(MODULE)


def test_the_hook_is_off_during_the_import_and_back_in_its_place_after(sdk_dir, hook, monkeypatch):
    sdk_dir()
    interpreter_distutils(monkeypatch, present=True)
    before = list(sys.meta_path)
    sdk = load()
    assert sdk.DOCKER_IMPORT_ERROR is None
    assert "_distutils_hack" not in sdk.docker.FINDERS_SEEN
    assert sys.meta_path[:len(before)] == before and sys.meta_path[1] is hook


def test_without_the_interpreters_own_distutils_the_hook_stays(sdk_dir, hook, monkeypatch):
    sdk_dir()
    interpreter_distutils(monkeypatch, present=False)
    sdk = load()
    assert sdk.DOCKER_IMPORT_ERROR is None
    assert "_distutils_hack" in sdk.docker.FINDERS_SEEN
    assert sys.meta_path[1] is hook


def test_an_sdk_that_needs_the_hook_is_imported_again_with_it(sdk_dir, hook, monkeypatch):
    sdk_dir(refuse_without_hook=True)
    interpreter_distutils(monkeypatch, present=True)
    sdk = load()
    assert sdk.DOCKER_IMPORT_ERROR is None
    assert "_distutils_hack" in sdk.docker.FINDERS_SEEN
    assert sys.meta_path.count(hook) == 1 and sys.meta_path[1] is hook


def test_an_sdk_that_fails_for_another_reason_is_not_imported_twice(sdk_dir, hook, monkeypatch, tmp_path):
    sdk_dir()
    (tmp_path / "docker" / "__init__.py").write_text(
        "import sys\nsys.IMPORTS_OF_DOCKER = getattr(sys, 'IMPORTS_OF_DOCKER', 0) + 1\nimport no_such_dependency\n")
    monkeypatch.setattr(sys, "IMPORTS_OF_DOCKER", 0, raising=False)
    interpreter_distutils(monkeypatch, present=True)
    sdk = load()
    assert sdk.docker is None and "no_such_dependency" in sdk.DOCKER_IMPORT_ERROR
    assert sys.IMPORTS_OF_DOCKER == 1
    assert sys.meta_path.count(hook) == 1 and sys.meta_path[1] is hook


def test_no_sdk_is_reported_not_raised_and_the_hook_is_back(sdk_dir, hook, monkeypatch):
    sdk_dir(present=False)
    interpreter_distutils(monkeypatch, present=True)
    sdk = load()
    assert sdk.docker is None
    assert "ImportError" in sdk.DOCKER_IMPORT_ERROR or "ModuleNotFoundError" in sdk.DOCKER_IMPORT_ERROR
    assert sys.meta_path.count(hook) == 1 and sys.meta_path[1] is hook


def test_a_hook_setuptools_put_back_itself_is_not_listed_twice(sdk_dir, hook, monkeypatch, tmp_path):
    sdk_dir()
    init = tmp_path / "docker" / "__init__.py"
    # As setuptools' add_shim does when setuptools is imported: its one hook, first on sys.meta_path.
    init.write_text("import sys\nsys.meta_path.insert(0, sys.SETUPTOOLS_HOOK)\n" + init.read_text())
    monkeypatch.setattr(sys, "SETUPTOOLS_HOOK", hook, raising=False)
    interpreter_distutils(monkeypatch, present=True)
    load()
    assert sys.meta_path.count(hook) == 1


def test_without_any_hook_the_sdk_is_imported_as_it_is(sdk_dir, monkeypatch):
    sdk_dir()
    interpreter_distutils(monkeypatch, present=True)
    before = list(sys.meta_path)
    sdk = load()
    assert sdk.DOCKER_IMPORT_ERROR is None and sdk.docker.FINDERS_SEEN is not None
    assert sys.meta_path[:len(before)] == before
