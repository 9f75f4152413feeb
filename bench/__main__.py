from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["footprint", "gps", "gpio", "modbus", "fleet", "replay", "wire", "soak"]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 64
    failed = 0
    for name in names:
        print(f"\n== bench/{name} ==", flush=True)
        failed += 0 if importlib.import_module(f"bench.{name}").main() == 0 else 1
    return 1 if failed else 0


raise SystemExit(main(sys.argv[1:]))
