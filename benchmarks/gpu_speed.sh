#!/usr/bin/env bash
# Issue 18's GPU measurements (docs/performance.md, "The GPU measurements") on a machine lent
# for a few minutes, in two modes: with CUDA graphs (maml-cli's default on CUDA: the compiled
# whole meta-iteration replayed as CUDA graphs, trainer.cuda_graphs=true; and for make bench's
# compiled engine rows, TORCHINDUCTOR_CUDAGRAPHS=1: inductor's cudagraph trees over the compiled
# meta-batch), and without them (plain: trainer.cuda_graphs=false, TORCHINDUCTOR_CUDAGRAPHS=0),
# to see whether capturing runs at all and whether it pays. In each mode:
#   bench-MODE.json: make bench's W2 (second order, against higher and the naive loop, compiled
#     included; target: compiled at most 7.5 ms), T1 (the default sinusoid run through the
#     trainer) and the evaluation rows E2, E4, E6 (vmap against the loop: engine=auto's choice);
#   sinusoid-MODE, omniglot-MODE: `maml-train task=sinusoid` and the Omniglot 5-way 1-shot
#     preset, whose TensorBoard perf/tasks_per_s gives the trainer's throughput (targets: 10x
#     the CPU's iterations per second; 5,000 tasks/s).
# summary.json has the numbers; speed.tgz everything, logs and TensorBoard files included.
#
# Prepared on the CPU machine as benchmarks/gpu_setup.sh says. There, as two calls of about
# 5 minutes each (both modes in one would pass a call's 10-minute limit):
#   MODES=graphs bash benchmarks/gpu_speed.sh
#   MODES=plain bash benchmarks/gpu_speed.sh
# The runs' lengths: WORKLOADS (W2), EVAL (E2,E4,E6), T1_ITERATIONS (5000),
# SINUSOID_ITERATIONS (3000), OMNIGLOT_ITERATIONS (1000), RUN_LIMIT (300 s each); OVERRIDES: more
# for both maml-train runs; MODES: "plain graphs" (the default), or one of them.
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
runs=outputs/speed
mkdir -p "$runs"
failed=0 modes=(${MODES-plain graphs})
# speed.tgz from what the runs so far wrote, after every run: a call cut short keeps what it made.
pack() {
    tar czf "$OUT/speed.tgz" --ignore-failed-read "$runs"/*.json "$runs"/*.log \
        "$runs"/*-*/maml-train.log "$runs"/*-*/config.yaml "$runs"/*-*/metrics.json "$runs"/*-*/tb
}
# One command, its output in $runs/NAME.log; stopped after RUN_LIMIT seconds so that a hang
# cannot take the call's other runs with it (a stopped maml-train keeps its TensorBoard file).
step() {
    local name=$1
    shift
    timeout "${RUN_LIMIT:-300}" "$@" > "$runs/$name.log" 2>&1 || failed=$((failed + 1))
    pack > /dev/null 2>&1
}
for mode in "${modes[@]}"; do
    graphs=$([ "$mode" = graphs ] && echo true || echo false)
    export TORCHINDUCTOR_CUDAGRAPHS=$([ "$mode" = graphs ] && echo 1 || echo 0)
    step "bench-$mode" python3 benchmarks/bench.py --device "$DEVICE" \
        --workloads "${WORKLOADS-W2}" --orders second --algorithms '' \
        --eval "${EVAL-E2,E4,E6}" --no-rl --no-trainer-compiled \
        "--$([ "$graphs" = true ] || echo no-)cuda-graphs" \
        --trainer-iterations "${T1_ITERATIONS:-5000}" --out "$runs/bench-$mode.json"
    step "sinusoid-$mode" maml-train task=sinusoid "device=$DEVICE" \
        "trainer.iterations=${SINUSOID_ITERATIONS:-3000}" "hydra.run.dir=$runs/sinusoid-$mode" \
        "trainer.cuda_graphs=$graphs" ${OVERRIDES-}
    step "omniglot-$mode" maml-train +experiment=omniglot_5w1s "device=$DEVICE" \
        "trainer.iterations=${OMNIGLOT_ITERATIONS:-1000}" "hydra.run.dir=$runs/omniglot-$mode" \
        "trainer.cuda_graphs=$graphs" ${OVERRIDES-}
done
python3 - "$runs" "$OUT/summary.json" "${modes[@]}" <<'PY'
"""The numbers the targets name, from what the runs wrote; a run that failed is left out."""
import json, statistics, sys
from pathlib import Path
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

runs, summary = Path(sys.argv[1]), {}
for mode in sys.argv[3:]:
    found = summary[mode] = {}
    bench = runs / f"bench-{mode}.json"
    if bench.is_file():
        data = json.loads(bench.read_text())
        found["machine"] = data["machine"]
        for r in data["results"]:
            found[f"{r['workload']} {r['order']} order, ms"] = {
                label: round(row["ms"], 3) for label, row in r["rows"].items()}
        for r in data["eval"]:
            found[f"{r['workload']} evaluation, tasks/s"] = {
                label: round(row["tasks_per_s"], 1) for label, row in r["rows"].items()}
        for r in data["trainer"]:
            found["T1 trainer, engine ms per iteration"] = [round(r["trainer_ms"], 3),
                                                            round(r["engine_ms"], 3)]
    for run in ("sinusoid", "omniglot"):
        tb = runs / f"{run}-{mode}" / "tb"
        if not tb.is_dir():
            continue
        events = EventAccumulator(str(tb))
        events.Reload()
        if "perf/tasks_per_s" in events.Tags()["scalars"]:
            rates = [e.value for e in events.Scalars("perf/tasks_per_s")]
            # the first window holds the compiling
            found[f"{run} tasks/s, median window"] = round(statistics.median(rates[1:] or rates), 1)
Path(sys.argv[2]).write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
PY
pack
echo "$failed of $((3 * ${#modes[@]})) runs failed;" \
    "$OUT/speed.tgz holds what they wrote ($runs/*.log)"
exit $((failed > 0))
