"""python -m crashcart.kube: the kubectl plugin, as bin/kubectl-crashcart runs it."""

import sys

from crashcart.kube.cli import main

sys.exit(main())
