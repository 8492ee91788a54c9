"""Makes this checkout importable as ansible_collections.inferops.vllm (the link `make setup` builds)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, "build", "collections")
if not os.path.isdir(os.path.join(COLLECTIONS, "ansible_collections", "inferops", "vllm")):
    raise RuntimeError("run `make setup` first: %s/ansible_collections/inferops/vllm is missing" % COLLECTIONS)
sys.path.insert(0, COLLECTIONS)
sys.path.insert(0, os.path.join(ROOT, "tests", "unit"))
