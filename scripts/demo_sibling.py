"""A sibling of the demo model (same geometry and tokenizer, MLPs perturbed by 5 %), for
`steer study transfer` on the demo:  python scripts/demo_sibling.py OUT_DIR"""

from __future__ import annotations

import sys
from pathlib import Path

from steer_cli.demo.sibling import make_demo_sibling

if __name__ == "__main__":
    print(make_demo_sibling(Path(sys.argv[1])))
