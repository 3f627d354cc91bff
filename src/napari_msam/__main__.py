"""``python -m napari_msam`` = the ``napari-msam`` command."""

import sys

from .cli import main

sys.exit(main())
