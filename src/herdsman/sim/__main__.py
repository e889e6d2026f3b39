"""`python -m herdsman.sim --model-path DIR ...`"""

from __future__ import annotations

import argparse
import sys

from herdsman.sim.cli import add_arguments, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m herdsman.sim",
        description="Simulated LLM inference engine speaking vLLM / SGLang gRPC.",
    )
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
