"""ffclip report: compare evaluation reports (`ffclip evaluate` output folders) side by side.

    ffclip report report_e4e/ report_pti/ [--names e4e pti] [--output comparison.md]

Prints a markdown table per kind of prompt (single prompts, compositions): one row per report, the overall mean ± std
of every metric the reports share; --output also writes it (atomically).
"""
from __future__ import annotations

import argparse
import os

from ffclip_jax.errors import InputError
from ffclip_jax.fileio import atomic_write
from ffclip_jax.report import comparison, read_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ffclip report", description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", metavar="REPORT", help="report folders (or their report.json)")
    p.add_argument("--names", nargs="+", help="a row name per report (default: the folder names)")
    p.add_argument("--output", help="also write the comparison to this markdown file")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    names = args.names or [os.path.basename(os.path.normpath(r)) for r in args.reports]
    if len(names) != len(args.reports):
        raise InputError(f"--names: {len(names)} names for {len(args.reports)} reports")
    if len(set(names)) != len(names):
        raise InputError(f"report names repeat ({', '.join(names)}): pass --names")
    text = comparison({name: read_report(path) for name, path in zip(names, args.reports)})
    print(text)
    if args.output:
        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        atomic_write(args.output, write)
