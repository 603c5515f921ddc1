"""`python -m exporter` is `caffe-exporter`."""

import sys

from exporter.cli import main

sys.exit(main())
