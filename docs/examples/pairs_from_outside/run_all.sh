# run_all.sh KIND_K ...: run and report each spec (e.g. null_k1 retrain_k10); wall times to walls.txt
for s in "$@"; do
  start=$(date +%s.%N)
  ${UNLEARN_AUDIT:-unlearn-audit} run $s.yaml --results RESULTS > $s.run.log 2>&1
  rc=$?
  end=$(date +%s.%N)
  echo "$s rc=$rc wall=$(echo "$end - $start" | bc)" >> walls.txt
  ${UNLEARN_AUDIT:-unlearn-audit} report RESULTS/${s/_/-} > $s.report.log 2>&1
done
