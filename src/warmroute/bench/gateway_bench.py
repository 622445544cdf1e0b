"""placeholder"""

from __future__ import annotations

import argparse


def add_gateway_bench_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_gateway_bench_command(args: argparse.Namespace) -> int:
    return 0
