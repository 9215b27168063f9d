"""`python -m benchmarks [--quick] [--only NAME] [--out BENCHMARKS.md] [--json results.json]`."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import SECTION_MODULES, SECTIONS, Config
from benchmarks.machine import machine_info, machine_markdown

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load_sections() -> None:
    for module in SECTION_MODULES:
        importlib.import_module(module)


def _header(quick: bool, only: list[str] | None) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# qlab benchmarks",
        "",
        "Run them with `make bench` or `python -m benchmarks` from the repository root "
        "(`--quick` for the small CI smoke run, `--only NAME` for one section, `--out FILE` to write elsewhere). "
        "All data is seeded synthetic data generated on the fly; nothing is downloaded.",
        "",
        f"Date: {now}",
    ]
    if quick:
        lines += ["", "**Quick mode** (CI smoke test): data sizes are a tenth of the full run, so the numbers "
                  "are not comparable with a full run and the targets are checked on smaller data."]
    if only:
        lines += ["", f"Only these sections were run: {', '.join(only)}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    _load_sections()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="Run qlab's benchmarks and write BENCHMARKS.md.")
    parser.add_argument("--quick", action="store_true", help="small data sizes, for CI smoke tests")
    parser.add_argument("--only", action="append", metavar="NAME", choices=sorted(SECTIONS),
                        help=f"run only this section (repeatable): {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md", help="markdown output (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers as JSON here")
    parser.add_argument("--seed", type=int, default=42, help="seed of the synthetic data (default: %(default)s)")
    args = parser.parse_args(argv)

    names = args.only or list(SECTIONS)
    info = machine_info()
    parts = [_header(args.quick, args.only), machine_markdown(info)]
    raw: dict[str, object] = {"quick": args.quick, "machine": info, "sections": {}}
    with tempfile.TemporaryDirectory(prefix="qlab-bench-") as tmp:
        for name in names:
            sec = SECTIONS[name]
            print(f"[bench] {sec.title} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            result = sec.run(Config(quick=args.quick, tmp_dir=Path(tmp), seed=args.seed))
            took = time.perf_counter() - start
            print(f"[bench] {sec.title}: {took:.1f} s", file=sys.stderr, flush=True)
            parts.append(f"## {sec.title}\n\n{result.markdown}")
            raw["sections"][name] = {**result.results, "section_wall_s": took}  # type: ignore[index]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    print(f"[bench] wrote {args.out}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
