"""`python -m bench.gpu_check`: the command in report.py."""

import os
import sys

from bench.gpu_check.report import main

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
