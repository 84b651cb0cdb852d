"""Builds pagedkv's CPython extension against the repository's static library.

    /usr/bin/python3 -m pip install --no-build-isolation ./python   # from the repository root
    make python                                                      # or: build in place (python/)

The extension links build/libpagedkv.a (exports pkv_ names only), so the installed
package needs no shared library at run time; `make lib` brings it up to date first. Needs python3-dev, python3-setuptools and python3-numpy only.
"""
import os
import subprocess

import numpy
from setuptools import Extension, setup

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
# PKV_STATIC: the archive to link (make sets it); else the repository's, brought up
# to date by `make lib` (a no-op when nothing changed).
archive = os.environ.get("PKV_STATIC") or os.path.join(root, "build", "libpagedkv.a")
if not os.environ.get("PKV_STATIC") and os.path.exists(os.path.join(root, "Makefile")):
    subprocess.check_call(["make", "-s", "-C", root, "lib"])

ext = Extension(
    "pagedkv._pagedkv",
    sources=[os.path.join("pagedkv", f)
             for f in ("_pagedkv.c", "cache.c", "seq.c", "attn.c", "dlpack.c", "tiers.c", "groups.c")],
    include_dirs=[os.path.join(root, "include"), numpy.get_include()],
    extra_objects=[archive],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                        "-fvisibility=hidden"],
    # PKV_LIBS: the libraries the archive needs beyond these (make sets it: -lhiredis with REDIS=1).
    extra_link_args=["-pthread", "-lm", "-Wl,--exclude-libs,ALL"]  # export PyInit only
    + [a for a in os.environ.get("PKV_LIBS", "").split() if a not in ("-pthread", "-lm")],
    depends=[archive, os.path.join(root, "include", "pagedkv.h"), os.path.join("pagedkv", "_pagedkv.h")],
)

setup(
    name="pagedkv",
    version="1.3.0",
    description="A paged KV cache for LLM inference and attention over it (FlashMLA conventions)",
    packages=["pagedkv"],
    package_dir={"pagedkv": "pagedkv"},
    ext_modules=[ext],
    python_requires=">=3.8",
    install_requires=["numpy"],
)
