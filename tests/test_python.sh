#!/bin/sh
# The Python package (python/): builds its extension in place against the static
# library (PKV_STATIC) and runs python/tests with pytest (or the plain runner when
# pytest is absent). Skips, exit 0, only when python3 or numpy is missing; .ci/run
# installs both (and pytest, and torch when Debian has it).
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-}
[ -n "$py" ] || { if [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; else py=$(command -v python3 || true); fi; }
if [ -z "$py" ]; then echo "test_python: skipped (no python3)"; exit 0; fi
if ! "$py" -c "import numpy" 2>/dev/null; then echo "test_python: skipped ($py has no numpy)"; exit 0; fi
static=${PKV_STATIC:-$root/build/libpagedkv.a}
case $static in /*) ;; *) static=$root/$static ;; esac
lib=${PKV_LIB:-$root/build/libpagedkv.so}
case $lib in /*) ;; *) lib=$root/$lib ;; esac
[ -f "$static" ] || { echo "test_python: $static is missing (make lib)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$root/python" || exit 1
if ! PKV_STATIC=$static "$py" setup.py -q build_ext --inplace --force --build-temp "$tmp" >"$tmp/build.log" 2>&1; then
    cat "$tmp/build.log"; echo "test_python: the extension did not build"; exit 1
fi
export PKV_LIB="$lib" PKV_VECTORS="${PKV_VECTORS:-$root/../shared/vectors}" PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"
if "$py" -c "import pytest" 2>/dev/null; then
    exec "$py" -m pytest -q -rs -p no:cacheprovider tests
else
    echo "test_python: pytest is not installed; running the plain runner"
    exec "$py" tests/run_plain.py
fi
