#!/bin/sh
# The library's layers call only down (docs/ARCHITECTURE.md): for every object
# of src/, each symbol it uses from another object of the library must be
# defined by a module of a lower layer. Read from the objects that make test
# built (nm), so the check is of the code as compiled, not of its comments.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
obj=${PKV_OBJ:-$root/build/obj/src}
[ -d "$obj" ] || { echo "test_layers: no objects in $obj"; exit 1; }

# Rank of a module. Attention (src/attn/) is one module beside the core; the
# FP8 bodies are one module; the cache handle is cache.c and ops.c.
rank() {
    case "$1" in
        common|siphash) echo 0 ;;
        dtype|cpu|tier_file) echo 1 ;;
        fp8|tier_redis) echo 2 ;;
        dtypes) echo 3 ;;
        pool) echo 4 ;;
        seq) echo 5 ;;
        prefix) echo 6 ;;
        store) echo 7 ;;
        tier|tier_meta) echo 8 ;;
        tier_async) echo 9 ;;
        cache) echo 10 ;;
        export|attn) echo 11 ;;
        *) echo "?" ;;
    esac
}
module() { # path of an object -> module name
    case "$1" in
        */attn/*) echo attn ;;
        */fp8*.o) echo fp8 ;;
        */tier_file*.o) echo tier_file ;;
        */ops.o|*/swap.o|*/groups.o) echo cache ;;
        *) basename "$1" .o ;;
    esac
}
# The objects of the library's sources (not stale ones of moved files).
objects() {
    for c in "$root"/src/*.c "$root"/src/attn/*.c; do
        o="$obj/${c#"$root"/src/}"
        echo "${o%.c}.o"
    done
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
: >"$tmp/defs"
for o in $(objects); do
    m=$(module "$o")
    nm --defined-only "$o" | awk -v m="$m" 'NF == 3 && $2 ~ /[TDBR]/ {print $3, m}' >>"$tmp/defs"
done
bad=0
checked=0
for o in $(objects); do
    m=$(module "$o")
    r=$(rank "$m")
    if [ "$r" = "?" ]; then echo "test_layers: $m has no layer (add it to tests/test_layers.sh)"; bad=1; continue; fi
    for s in $(nm --undefined-only "$o" | awk '{print $2}'); do
        d=$(awk -v s="$s" '$1 == s {print $2; exit}' "$tmp/defs")
        [ -n "$d" ] || continue           # libc, libm, pthread
        [ "$d" = "$m" ] && continue       # within one module
        checked=$((checked + 1))
        dr=$(rank "$d")
        if [ "$dr" -ge "$r" ]; then
            echo "test_layers: $m (layer $r) calls $s of $d (layer $dr): not a lower layer"
            bad=1
        fi
    done
done
[ "$bad" -eq 0 ] || exit 1
echo "test_layers: $checked calls between library modules, each into a lower layer"
