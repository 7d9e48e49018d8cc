"""``python -m napari_unetkit.cli``: the ``unetkit`` command."""

import sys

from napari_unetkit.cli import main

sys.exit(main())
