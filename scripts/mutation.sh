#!/usr/bin/env bash
# Mutation testing of the numpy core: does the test suite catch wrong backprop?
#
#   scripts/mutation.sh              mutate reference/layers.py, losses.py, optimizers.py; run the tests
#   MUTATION_TESTS=smoke scripts/mutation.sh   the same mutants against the smoke tier only (-m smoke)
#   scripts/mutation.sh results      list the surviving mutants of the last run
#   scripts/mutation.sh show NAME    the diff of one mutant
#
# mutmut 3 changes the code one small edit at a time (a + for a -, 1 for 0, < for <=, a dropped
# argument ...) and runs, for each mutant, the tests that exercise the mutated function: the fast
# parity suite against torch (tests/test_parity.py's torch half: -m "not keras") and the
# finite-difference suite, listed in TESTS (not the golden baselines, which would catch
# any change of a number and so say nothing about the checks themselves). A mutant that passes them
# all "survives". Each survivor is either killed by a test in tests/test_mutants.py or explained as
# equivalent (it changes no result) in README "Regression checks".
#
# It runs in a scratch copy of the committed tree (git archive HEAD) at $MUTATION_DIR (default
# /tmp/bprop-mutation), so the shared work tree is never touched and mutants/ never lands in it;
# commit first what you want mutated and tested. The mutmut settings are written to the copy's
# setup.cfg (mutmut reads [tool.mutmut] from pyproject.toml first, if someone adds it there).
set -euo pipefail

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
WORK=${MUTATION_DIR:-/tmp/bprop-mutation}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
MUTMUT=${MUTMUT:-$(dirname "$PYTHON")/mutmut}
# The fast parity and finite-difference suites, the reference's own tests (errors included: a
# mutant may turn a clear error into a wrong number), the fast forms and the mutant killers.
TESTS=(
    tests/test_layers.py
    tests/test_losses.py
    tests/test_optimizers.py
    tests/test_errors.py
    tests/test_fast_forms.py
    tests/test_mutants.py
    tests/test_numeric.py
    tests/test_parity.py
    tests/test_torch_twin.py
)
# Left out as too slow to run for every mutant (finite differences over a whole MNIST-sized preset,
# 100,000 parameters; twin round trips of the presets). The small layer cases cover the same code.
DESELECT=(
    tests/test_numeric.py::test_preset_matches_finite_differences
    tests/test_parity.py::test_params_and_state_round_trip_bit_exact
)

case ${MUTATION_TESTS:-full} in
    full | smoke) ;;
    *) echo "mutation.sh: MUTATION_TESTS is full or smoke, got '$MUTATION_TESTS'" >&2; exit 2 ;;
esac
case "${1:-run}" in
    results) cd "$WORK" && exec "$MUTMUT" results ;;
    show) cd "$WORK" && exec "$MUTMUT" show "$2" ;;
    run) ;;
    *) echo "usage: $0 [run | results | show MUTANT]" >&2; exit 2 ;;
esac

rm -rf "$WORK"
mkdir -p "$WORK"
git -C "$ROOT" archive HEAD | tar -x -C "$WORK"
cd "$WORK"
present=()
for t in "${TESTS[@]}"; do
    if [[ -f $t ]]; then present+=("$t"); else echo "mutation.sh: $t not in HEAD, skipped" >&2; fi
done
{
    echo "[mutmut]"
    echo "source_paths = reference/"
    echo "process_isolation = forkserver"  # torch is not fork-safe
    echo "only_mutate ="
    printf '    %s\n' reference/layers.py reference/losses.py reference/optimizers.py
    echo "also_copy ="
    printf '    %s\n' oracles/ data_loaders/ tests/
    echo "pytest_add_cli_args_test_selection ="
    printf '    %s\n' "${present[@]}"
    echo "pytest_add_cli_args ="
    # MUTATION_TESTS=smoke: only the smoke tier (tests/conftest.py), to measure what it kills
    markers="not slow and not mnist and not keras"
    if [[ ${MUTATION_TESTS:-full} == smoke ]]; then markers="smoke and $markers"; fi
    printf '    %s\n' -p no:cacheprovider -p no:xdist -m "$markers" --timeout=900
    for d in "${DESELECT[@]}"; do printf '    %s\n' --deselect "$d"; done
} > setup.cfg
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
start=$(date +%s)
"$MUTMUT" run --max-children "${MUTATION_JOBS:-2}"
echo "mutation.sh: $(( $(date +%s) - start )) s; survivors: $0 results; one diff: $0 show NAME"
