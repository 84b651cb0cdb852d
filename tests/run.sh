#!/bin/sh
# Runs each test binary given as an argument and ends with one summary line
# "tests: N passed, N failed". PKV_WRAP (e.g. valgrind ...) prefixes each run.
passed=0; failed=0; failures=""
for t in "$@"; do
    start=$(date +%s)
    if $PKV_WRAP "$t"; then
        passed=$((passed + 1)); status=ok
    else
        failed=$((failed + 1)); status=FAILED; failures="$failures $(basename "$t")"
    fi
    echo "-- $(basename "$t"): $status ($(( $(date +%s) - start )) s)"
done
[ -n "$failures" ] && echo "failed:$failures"
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
