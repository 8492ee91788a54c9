"""The emulator's `vllm serve` accepts exactly vLLM 0.33's flags: its parser is built from the flag catalog
(plugins/module_utils/_vllm_flag_catalog.py, dumped from vLLM's own parser), copied into its image. Checked in the
emulator image itself, which must have been built from the catalog on disk."""

import json
import subprocess

from ansible_collections.inferops.vllm.plugins.module_utils._vllm_flag_catalog import RELEASES
from labhost import EMULATOR_IMAGE

PROBE = r"""
import json, sys
sys.path.insert(0, "/usr/lib/vllm-emulator")
from vllm_emu import cli, flag_catalog
release = flag_catalog.RELEASES["0.33.0"]
top, serve = cli.build_parser()
longs, shorts = set(), set()
for action in serve._actions:
    for option in action.option_strings:
        (longs if option.startswith("--") else shorts).add(option.lstrip("-"))
refused = []
for flag, kind in sorted(release["flags"].items()):
    choices = serve._option_string_actions["--" + flag].choices
    value = [] if kind in ("switch", "optional") else [str(choices[0]) if choices else "1"]
    try:
        # --model is the positional model's other spelling: vLLM moves it to the front.
        cli.parse(["serve"] + ([] if flag == "model" else ["/m"]) + ["--" + flag] + value)
    except cli.ArgsError:
        pass  # --config 1: the flag is known, its file is not
    except SystemExit:
        refused.append(flag)
foreign = sorted(m for m in sys.modules if m.startswith(("ansible", "plugins")))
print(json.dumps({"longs": sorted(longs), "shorts": sorted(shorts), "refused": refused, "foreign": foreign}))
"""


def probe():
    result = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python3", EMULATOR_IMAGE, "-c", PROBE],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, "%s\n(build the lab's images with `make lab-up`)" % result.stderr
    return json.loads(result.stdout)


def test_the_emulator_accepts_exactly_the_flags_of_vllm_0_33():
    release = RELEASES["0.33.0"]
    found = probe()
    assert set(found["longs"]) - {"help"} == set(release["flags"]), \
        "the emulator image was not built from this catalog: rebuild it with `tests/lab/labctl.py images`"
    assert set(found["shorts"]) - {"h"} == set(release["short"])
    assert found["refused"] == []
    assert found["foreign"] == []
