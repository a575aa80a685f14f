#!/usr/bin/env bash
# The regression guard of the packet path: counts instructions per packet
# per mode (perf/scripts/callgrind-engine.sh, a small run: the counts do
# not depend on the flow count) and fails when one exceeds its budget in
# perf/budget.txt by more than 10 %.
set -euo pipefail
cd "$(dirname "$0")/../.."
table=$(FLOWS=2000 perf/scripts/callgrind-engine.sh)
echo "$table"
status=0
while read -r mode established new; do
    [[ -z "$mode" || "$mode" == \#* ]] && continue
    read -r got_established got_new < <(awk -F'|' -v m="$mode" '{ gsub(/ /, "") } $2 == m { print $3, $4 }' <<<"$table")
    if [[ -z "${got_established:-}" ]]; then
        echo "budget: no figure for mode $mode" >&2
        status=1
        continue
    fi
    for check in "established $got_established $established" "new-flow $got_new $new"; do
        read -r what got budget <<<"$check"
        if ((got * 10 > budget * 11)); then
            echo "budget: $mode $what packet takes $got instructions, more than 10 % over its budget of $budget (perf/budget.txt)" >&2
            status=1
        fi
    done
done <perf/budget.txt
[[ $status == 0 ]] && echo "budget: every mode within 10 % of perf/budget.txt"
exit $status
