#!/usr/bin/env bash
# Results rows on a machine lent for a few minutes: each row of benchmarks/rows.yaml named on the
# command line trains beside the others on the one GPU for at most LIMIT seconds (then stops as
# SIGTERM stops it, with a checkpoint) and is evaluated; the rows' results, logs and last
# checkpoints are packed into $OUT/rows.tgz to bring back.
#
# Prepared on the CPU machine as benchmarks/gpu_setup.sh says.
# There:
#   LIMIT=420 bash benchmarks/gpu_session.sh ROW [ROW ...]
# Back here: tar xzf rows.tgz, then python benchmarks/reproduce.py --table. A row stopped by the
# limit keeps its state in its results (resume.pt): once those are committed, the same command
# on any machine continues it.
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
mkdir -p outputs/rows
for row in "$@"; do
    python3 benchmarks/reproduce.py "$row" --device "$DEVICE" --time-limit "${LIMIT:-420}" \
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
