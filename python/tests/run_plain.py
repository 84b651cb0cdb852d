"""Runs python/tests without pytest: every test_* function of every test_*.py,
parametrized cases expanded, skips reported. Used by tests/test_python.sh when
python3-pytest is not installed."""
import importlib.util
import os
import sys
import traceback

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
sys.path.insert(1, os.path.dirname(here))  # the package, built in place
sys.modules["pytest"] = None  # the stand-in, even where pytest exists (so this runner is tested too)
import minipytest  # noqa: E402

passed = failed = skipped = 0
for name in sorted(os.listdir(here)):
    if not (name.startswith("test_") and name.endswith(".py")):
        continue
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(here, name))
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except minipytest.Skipped as e:
        print(f"{name}: skipped ({e})")
        skipped += 1
        continue
    for fname in sorted(dir(mod)):
        fn = getattr(mod, fname)
        if not (fname.startswith("test_") and callable(fn)):
            continue
        for args in getattr(fn, "_params", [()]):
            label = f"{name}::{fname}{list(args) if args else ''}"
            try:
                fn(*args)
                passed += 1
            except minipytest.Skipped as e:
                print(f"{label}: skipped ({e})")
                skipped += 1
            except Exception:
                print(f"{label}: FAILED")
                traceback.print_exc()
                failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
