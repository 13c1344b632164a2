"""No import cycles between the glue's modules: each src/*.rs names the modules it uses as
`crate::name`; the graph of those references must have no cycle. Prints the cycles found."""

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def graph():
    mods = {p.stem: p.read_text() for p in SRC.glob("*.rs")}
    # A folder module (src/store/mod.rs and its files) is one module of the graph.
    for folder in SRC.iterdir():
        if (folder / "mod.rs").exists():
            mods[folder.name] = "\n".join(p.read_text() for p in sorted(folder.glob("*.rs")))
    # lib.rs wires everything together and tests.rs reaches everywhere: neither is a layer.
    return {m: {d for d in re.findall(r"crate::([a-z_]+)", text) if d in mods and d != m}
            for m, text in mods.items() if m not in ("lib", "tests")}


def cycles(g):
    found, state = [], {}

    def visit(n, path):
        state[n] = "open"
        for d in sorted(g.get(n, ())):
            if state.get(d) == "open":
                found.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[n] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


if __name__ == "__main__":
    found = cycles(graph())
    for c in found:
        print("cycle: " + " -> ".join(c))
    print(f"{0 if found else 1} passed, {1 if found else 0} failed")
    sys.exit(1 if found else 0)
