#!/usr/bin/env python3
"""Checks that .wasm plugins match fulcrum's plugin ABI v1 (plugin-sdk/ABI.md).

Each module must import nothing, have no start function, export `memory`,
and export exactly the required functions plus any of the optional ones,
with the ABI's signatures. The only other exports allowed are the two
globals rustc adds to every wasm32-unknown-unknown cdylib, which the host
ignores. Prints one line per module: size and initial memory.
Standard library only, so it runs wherever the build does.

usage: check-wasm.py FILE.wasm...
"""
import sys

I32 = 0x7F
REQUIRED = {
    "lb_abi_version": ((), (I32,)),
    "lb_state_ptr": ((), (I32,)),
    "lb_state_cap": ((), (I32,)),
    "lb_pick": ((I32,), (I32,)),
}
OPTIONAL = {
    "lb_update": ((I32,), ()),
    "lb_health": ((I32,) * 7, (I32,)),
}
TOOLCHAIN_GLOBALS = {"__data_end", "__heap_base"}
KIND = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}


class Reader:
    def __init__(self, data, pos=0):
        self.data, self.pos = data, pos

    def byte(self):
        self.pos += 1
        return self.data[self.pos - 1]

    def uleb(self):
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return result

    def name(self):
        n = self.uleb()
        self.pos += n
        return self.data[self.pos - n:self.pos].decode()

    def vec(self, item):
        return [item() for _ in range(self.uleb())]


def limits(r):
    flags = r.byte()
    minimum = r.uleb()
    if flags & 1:
        r.uleb()
    return minimum


def parse(data):
    if data[:8] != b"\0asm\x01\0\0\0":
        raise ValueError("not a wasm core module (version 1)")
    r = Reader(data, 8)
    types, funcs, imports, exports, memories, start = [], [], [], {}, [], False
    while r.pos < len(data):
        sid, size = r.byte(), r.uleb()
        s, r.pos = Reader(data[r.pos:r.pos + size]), r.pos + size
        if sid == 1:
            def functype():
                assert s.byte() == 0x60
                return tuple(s.vec(s.byte)), tuple(s.vec(s.byte))
            types = s.vec(functype)
        elif sid == 2:
            def imp():
                name, kind = f"{s.name()}.{s.name()}", s.byte()
                if kind == 0:  # imported functions come first in the index space
                    funcs.append(s.uleb())
                elif kind in (1, 3, 4):  # table / global / tag: two bytes, then limits or an index
                    s.byte()
                    if kind == 1:
                        limits(s)
                    else:
                        s.uleb() if kind == 4 else s.byte()
                else:  # memory
                    limits(s)
                return name
            imports = s.vec(imp)
        elif sid == 3:
            funcs += s.vec(s.uleb)
        elif sid == 5:
            memories = s.vec(lambda: limits(s))
        elif sid == 7:
            for _ in range(s.uleb()):
                name, kind, index = s.name(), s.byte(), s.uleb()
                exports[name] = (kind, index)
        elif sid == 8:
            start = True
    return types, funcs, imports, exports, memories, start


def check(path):
    data = open(path, "rb").read()
    types, funcs, imports, exports, memories, start = parse(data)
    errors = []
    if imports:
        errors.append(f"imports {imports[0]} (plugins must import nothing)")
    if start:
        errors.append("has a start function")
    if exports.get("memory", (None,))[0] != 2:
        errors.append("does not export `memory`")
    for name, (kind, index) in exports.items():
        if name == "memory" or (kind == 3 and name in TOOLCHAIN_GLOBALS):
            continue
        want = REQUIRED.get(name) or OPTIONAL.get(name)
        if want is None or kind != 0:
            errors.append(f"unexpected export {KIND.get(kind, kind)} `{name}`")
        elif types[funcs[index]] != want:
            errors.append(f"`{name}` has signature {types[funcs[index]]}, ABI says {want}")
    errors += [f"missing export `{n}`" for n in REQUIRED if n not in exports]
    optional = [n for n in OPTIONAL if n in exports]
    pages = memories[0] if memories else 0
    print(f"{path}: {len(data)} bytes, memory {pages} pages ({pages * 64} KiB)"
          + (f", optional: {' '.join(optional)}" if optional else ""))
    for e in errors:
        print(f"  error: {e}")
    return not errors


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ok = all([check(p) for p in sys.argv[1:]])
    sys.exit(0 if ok else 1)
