"""``ctsr-sample [DIR]``: fetch (once) and print the path of the sample chest CT used by the demo."""
from __future__ import annotations

import argparse
import sys

from ctsr_models.io.sample_data import sample_ct

from .common import add_common_args, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctsr-sample", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("directory", nargs="?", help="cache folder (default: $CTSR_CACHE or ~/.cache/ctsr)")
    add_common_args(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(f"{sample_ct(args.directory)}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
