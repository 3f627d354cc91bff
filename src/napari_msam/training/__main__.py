"""``python -m napari_msam.training DATA_DIR --out DIR ...`` (same options as ``napari-msam train``)."""

import sys

from napari_msam.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
