#!/usr/bin/env python3
"""ABI guard for pagedkv (make check-abi / make abi-update).

Records, from the built libraries and the public header:
  - the version and the soname,
  - every dynamic symbol the shared library exports and every global symbol the
    static archive defines (both must be pkv_ names only),
  - every public struct's size and each field's offset and size (a small C
    program generated from the header and compiled with $CC),
  - every enum constant's value.
and compares them with the committed record (abi/pagedkv.abi).

A difference fails unless the version says it may happen:
  - breaking (a symbol removed, a field moved, resized or removed, a struct
    shrunk, an enum value changed or removed): the major version must change;
  - additive (symbols, fields at the end, enum values added): the minor
    version must change.
When the version did change, the record is out of date and the check still
fails until `make abi-update` rewrites it (so the record always describes the
current release).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

HEADER = "include/pagedkv.h"


def header_text():
    with open(HEADER) as f:
        return f.read()


def strip_comments(s):
    s = re.sub(r"/\*.*?\*/", " ", s, flags=re.S)
    return re.sub(r"//[^\n]*", " ", s)


def version(text):
    m = re.search(r'#define PKV_VERSION_STRING "(\d+)\.(\d+)\.(\d+)"', text)
    if not m:
        sys.exit("check_abi: no PKV_VERSION_STRING in " + HEADER)
    return tuple(int(x) for x in m.groups())


def structs(text):
    """{name: [field, ...]} for every `typedef struct name {...} name;`."""
    out = {}
    body = strip_comments(text)
    for m in re.finditer(r"typedef\s+struct\s+(\w+)\s*\{(.*?)\}\s*(\w+)\s*;", body, flags=re.S):
        name, fields_src = m.group(3), m.group(2)
        fields = []
        for decl in fields_src.split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            fp = re.search(r"\(\s*\*\s*(\w+)\s*\)\s*\(", decl)  # function pointer
            if fp:
                fields.append(fp.group(1))
                continue
            # "type a, b[3], *c" -> a, b, c
            first, *rest = decl.split(",")
            names = [re.search(r"(\w+)\s*(\[[^\]]*\])*\s*$", first).group(1)]
            for r in rest:
                names.append(re.search(r"(\w+)\s*(\[[^\]]*\])*\s*$", r).group(1))
            fields.extend(names)
        out[name] = fields
    return out


def enum_names(text):
    names = []
    body = strip_comments(text)
    for m in re.finditer(r"enum\s+\w*\s*\{(.*?)\}", body, flags=re.S):
        for item in m.group(1).split(","):
            item = item.strip()
            if item:
                names.append(item.split("=")[0].strip())
    return names


def layout(cc, text):
    """Lines describing struct layouts and enum values, from a compiled probe."""
    src = ['#include <stddef.h>', '#include <stdio.h>', '#include "pagedkv.h"', "int main(void) {"]
    for name, fields in sorted(structs(text).items()):
        src.append(f'    printf("struct {name} %zu\\n", sizeof({name}));')
        for f in fields:
            src.append(f'    printf("field {name}.{f} %zu %zu\\n", offsetof({name}, {f}), '
                       f'sizeof((({name} *)0)->{f}));')
    for e in sorted(enum_names(text)):
        src.append(f'    printf("enum {e} %lld\\n", (long long){e});')
    src.append("    return 0;\n}\n")
    with tempfile.TemporaryDirectory() as d:
        c = os.path.join(d, "probe.c")
        exe = os.path.join(d, "probe")
        with open(c, "w") as f:
            f.write("\n".join(src))
        subprocess.run(cc.split() + ["-std=c11", "-Iinclude", c, "-o", exe], check=True)
        return subprocess.run([exe], check=True, capture_output=True, text=True).stdout.splitlines()


def symbols(shared, static):
    dyn = subprocess.run(["nm", "-D", "--defined-only", shared], check=True, capture_output=True,
                         text=True).stdout.split("\n")
    st = subprocess.run(["nm", "-g", "--defined-only", static], check=True, capture_output=True,
                        text=True).stdout.split("\n")
    names = set()
    bad = []
    for kind, lines in (("shared", dyn), ("static", st)):
        for ln in lines:
            parts = ln.split()
            if len(parts) != 3 or parts[1] in ("w", "U", "A"):
                continue
            if not parts[2].startswith("pkv_"):
                bad.append(f"{kind}: {parts[2]}")
            names.add(parts[2])
    return sorted(names), bad


def soname(shared):
    out = subprocess.run(["readelf", "-d", shared], check=True, capture_output=True, text=True).stdout
    m = re.search(r"\(SONAME\).*\[(.*)\]", out)
    return m.group(1) if m else ""


def record(args):
    text = header_text()
    v = version(text)
    syms, bad = symbols(args.shared, args.static)
    lines = [f"version {v[0]}.{v[1]}.{v[2]}", f"soname {soname(args.shared)}"]
    lines += [f"symbol {s}" for s in syms]
    lines += layout(args.cc, text)
    return v, lines, bad


def classify(old, new):
    """(breaking, additive) differences between two records (version lines excluded)."""
    def parse(lines):
        d = {}
        for ln in lines:
            k, _, rest = ln.partition(" ")
            if k == "version":
                continue
            key, _, val = rest.partition(" ")
            d[(k, key)] = val
        return d
    o, n = parse(old), parse(new)
    breaking, additive = [], []
    for key, val in o.items():
        if key not in n:
            breaking.append(f"removed {key[0]} {key[1]}")
        elif n[key] != val:
            if key[0] == "struct" and int(n[key]) > int(val):
                additive.append(f"struct {key[1]} grew {val} -> {n[key]}")
            else:
                breaking.append(f"changed {key[0]} {key[1]}: {val} -> {n[key]}")
    for key in n:
        if key not in o:
            additive.append(f"added {key[0]} {key[1]} {n[key]}")
    return breaking, additive


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cc", default="cc")
    ap.add_argument("--shared", required=True)
    ap.add_argument("--static", required=True)
    ap.add_argument("--soname", required=True)
    ap.add_argument("--update", action="store_true")
    ap.add_argument("abi_file")
    args = ap.parse_args()

    v, lines, bad = record(args)
    problems = []
    if bad:
        problems.append("non-pkv_ symbols exported: " + ", ".join(bad))
    got_soname = soname(args.shared)
    if got_soname != args.soname or got_soname != f"libpagedkv.so.{v[0]}":
        problems.append(f"soname {got_soname!r}, expected libpagedkv.so.{v[0]} (the major version)")
    if args.update:
        if problems:
            sys.exit("check_abi: " + "; ".join(problems))
        with open(args.abi_file, "w") as f:
            f.write("# pagedkv ABI record: written by `make abi-update`, checked by `make check-abi`.\n")
            f.write("\n".join(lines) + "\n")
        print(f"check_abi: recorded {len(lines)} lines for {v[0]}.{v[1]}.{v[2]} in {args.abi_file}")
        return
    try:
        with open(args.abi_file) as f:
            old = [ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#")]
    except OSError as e:
        sys.exit(f"check_abi: cannot read {args.abi_file}: {e.strerror} (make abi-update writes it)")
    ov = tuple(int(x) for x in old[0].split()[1].split(".")) if old and old[0].startswith("version ") else (0, 0, 0)
    breaking, additive = classify(old, lines)
    if breaking and v[0] == ov[0]:
        problems.append("breaking ABI change without a major version bump "
                        f"({ov[0]}.{ov[1]}.{ov[2]} -> {v[0]}.{v[1]}.{v[2]}):\n  " + "\n  ".join(breaking))
    elif additive and not breaking and v[:2] == ov[:2]:
        problems.append("ABI additions without a minor version bump:\n  " + "\n  ".join(additive))
    elif breaking or additive or v != ov:
        problems.append(f"version {ov[0]}.{ov[1]}.{ov[2]} -> {v[0]}.{v[1]}.{v[2]} with these changes; "
                        "record them with `make abi-update`:\n  " + "\n  ".join(breaking + additive or ["(none)"]))
    if problems:
        sys.exit("check_abi: FAILED\n" + "\n".join(problems))
    print(f"check_abi: ok ({len(lines) - 2} symbols, fields and enum values match {v[0]}.{v[1]}.{v[2]})")


if __name__ == "__main__":
    main()
