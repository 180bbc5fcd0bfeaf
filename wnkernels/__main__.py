"""``python -m wnkernels bench ...``: the same as the ``wnkernels`` console script."""

import sys

from wnkernels.bench import main

if __name__ == "__main__":
    sys.exit(main())
