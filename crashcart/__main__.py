import sys

from crashcart.cli import main

sys.exit(main())
