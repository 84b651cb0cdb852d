#!/bin/sh
# The README's examples run as shown: quickstart's output, the tier example
# run twice on one directory (the second run, a new process, is served from
# the file tier with every value checked), and the extra-keys example (it exits
# non-zero unless every request finds the cached tokens the README shows).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
ex="$root/${PKV_BUILD:-build}/examples"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test_examples: $*"; exit 1; }

"$ex/quickstart" >"$tmp/q.out" || fail "quickstart failed"
grep -q "append: ok, copy block 1 -> 2, new slot 164" "$tmp/q.out" || fail "quickstart output: $(cat "$tmp/q.out")"

"$ex/tier_restart" "$tmp/tier" >"$tmp/1.out" || fail "tier_restart (first run) failed: $(cat "$tmp/1.out")"
grep -q "3 blocks written to the file tier" "$tmp/1.out" || fail "first run: $(cat "$tmp/1.out")"
"$ex/tier_restart" "$tmp/tier" >"$tmp/2.out" || fail "tier_restart (restart) failed: $(cat "$tmp/2.out")"
grep -q "restarted: 192 of 200 prompt tokens served from the file tier (3 blocks promoted, 0 values off)" "$tmp/2.out" ||
    fail "restart: $(cat "$tmp/2.out")"
"$ex/extra_keys" >"$tmp/x.out" || fail "extra_keys failed: $(cat "$tmp/x.out")"
grep -q "adapter 1, image B: 16 of 64 prompt tokens cached" "$tmp/x.out" || fail "extra_keys output: $(cat "$tmp/x.out")"
"$ex/hybrid" >"$tmp/h.out" || fail "hybrid failed: $(cat "$tmp/h.out")"
grep -q "ok: 8100 tokens; full group holds 127 blocks, window group 17 blocks" "$tmp/h.out" || fail "hybrid output: $(cat "$tmp/h.out")"
grep -q "full group still holds 127 blocks" "$tmp/h.out" || fail "hybrid refusal: $(cat "$tmp/h.out")"
echo "test_examples: quickstart, the file-tier restart, the extra-keys and the hybrid examples give the README's output"
