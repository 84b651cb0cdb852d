"""The few pytest features python/tests use, for machines without pytest:
raises (with match), skip, importorskip, mark.parametrize (one argument name list)."""
import re


class Skipped(Exception):
    pass


def skip(reason=""):
    raise Skipped(reason)


def importorskip(name, reason=None):
    try:
        return __import__(name)
    except ImportError:
        raise Skipped(reason or f"could not import {name!r}") from None


class raises:
    def __init__(self, exc, match=None):
        self.exc, self.match, self.value = exc, match, None

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            raise AssertionError(f"DID NOT RAISE {self.exc}")
        if not issubclass(et, self.exc):
            return False
        if self.match and not re.search(self.match, str(ev)):
            raise AssertionError(f"{str(ev)!r} does not match {self.match!r}")
        self.value = ev
        return True


class _Mark:
    @staticmethod
    def parametrize(names, values):
        multi = "," in names

        def deco(fn):
            fn._params = [tuple(v) if multi else (v,) for v in values]
            return fn
        return deco


mark = _Mark()
