#!/usr/bin/env bash
# Results rows on a machine lent for a few minutes: each row of benchmarks/rows.yaml named on the
# command line trains beside the others on the one GPU for at most LIMIT seconds (then stops as
# SIGTERM stops it, with a checkpoint) and is evaluated; the rows' results, logs and last
# checkpoints are packed into $OUT/rows.tgz to bring back.
#
# Prepared on the CPU machine (.data and .whl are ignored by git; carry both):
#   mkdir -p .data && cp -r ../shared/data/omniglot .data/
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1
#   python -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
# There, with a Python that has torch (maml-cli and Hydra are installed from the tree and .whl
# when missing):
#   LIMIT=420 bash benchmarks/gpu_session.sh ROW [ROW ...]
# Back here: tar xzf rows.tgz, then python benchmarks/reproduce.py --table. A row stopped by the
# limit keeps its state in its results (resume.pt): once those are committed, the same command
# on any machine continues it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_session}
mkdir -p "$OUT" outputs/rows
if ! python3 -c "import maml_cli, hydra" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl || exit
    python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit
fi
export MAML_DATA_ROOT=$PWD/.data PYTHONUNBUFFERED=1
for row in "$@"; do
    python3 benchmarks/reproduce.py "$row" --device "${DEVICE:-cuda}" --time-limit "${LIMIT:-420}" \
        > "outputs/rows/$row.log" 2>&1 &
done
failed=0
for job in $(jobs -p); do wait "$job" || failed=$((failed + 1)); done
tar czf "$OUT/rows.tgz" --ignore-failed-read $(for row in "$@"; do
    r=outputs/rows/$row
    echo "benchmarks/results/rows/$row" "$r.log" "$r/train.log" "$r"/seg*/maml-train.log \
        "$r"/seg*/config.yaml "$r"/seg*/metrics.json "$r"/seg*/checkpoints/last.pt "$r"/seg*/tb
done)
echo "$failed of $# rows failed; $OUT/rows.tgz holds what they wrote (outputs/rows/<row>.log)"
exit $((failed > 0))
