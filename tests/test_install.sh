#!/bin/sh
# make install / uninstall into a scratch PREFIX, then the README's pkg-config
# recipe, built and run exactly as written (no LD_LIBRARY_PATH, no ldconfig), and
# the static recipe. make test runs this after the libraries and pkv are built.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc=${CC:-cc}
fail() { echo "test_install: $*"; exit 1; }

make -s -C "$root" install BUILD="${PKV_BUILD:-build}" PREFIX="$tmp/usr" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "make install failed"; }
for f in include/pagedkv.h lib/libpagedkv.a lib/libpagedkv.so lib/pkgconfig/pagedkv.pc bin/pkv; do
    [ -e "$tmp/usr/$f" ] || fail "make install did not install $f"
done
"$tmp/usr/bin/pkv" info >/dev/null || fail "the installed pkv does not run"

# The recipe of README.md ("Use it from your program").
export PKG_CONFIG_PATH="$tmp/usr/lib/pkgconfig"
$cc "$root/examples/quickstart.c" $(pkg-config --cflags --libs pagedkv) -o "$tmp/app" || fail "shared build failed"
env -u LD_LIBRARY_PATH "$tmp/app" >"$tmp/app.out" 2>&1 || { cat "$tmp/app.out"; fail "the shared build does not start"; }
ldd "$tmp/app" | grep -q "$tmp/usr/lib/libpagedkv.so" || fail "the program did not load the installed library"
$cc "$root/examples/quickstart.c" $(pkg-config --cflags pagedkv) "$(pkg-config --variable=libdir pagedkv)/libpagedkv.a" \
    $(pkg-config --static --libs-only-other --libs-only-l pagedkv | sed 's/-lpagedkv//') -o "$tmp/app_static" || fail "static build failed"
"$tmp/app_static" >/dev/null || fail "the static build does not run"
ldd "$tmp/app_static" | grep -q libpagedkv && fail "the static build still loads libpagedkv.so"

make -s -C "$root" uninstall BUILD="${PKV_BUILD:-build}" PREFIX="$tmp/usr" >/dev/null 2>&1 || fail "make uninstall failed"
left=$(find "$tmp/usr" -type f -o -type l)
[ -z "$left" ] || fail "make uninstall left: $left"
echo "test_install: install, the pkg-config recipe (shared and static) and uninstall: ok"
