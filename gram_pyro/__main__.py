import sys

from gram_pyro.cli import main

sys.exit(main())
