import sys

from proj.cli import main

sys.exit(main())
