"""Same as `nsa-metadata bench`: python benchmarks/bench.py [--json FILE]."""

import sys

from nsa_metadata.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
