#!/usr/bin/env python
"""Search your own videos by text: the same program as the ``clip4vla-search`` command.

    python scripts/search.py index ~/Videos --model runs/pretrain_synthetic/model
    python scripts/search.py query "a dog barking in the rain" --dir ~/Videos --top-k 5
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from clip4vla.search import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
