"""Entry point: `python -m serving.replica --model DIR [flags]` (see server.py)."""

import sys

from serving.replica.server import main

if __name__ == "__main__":
    sys.exit(main())
