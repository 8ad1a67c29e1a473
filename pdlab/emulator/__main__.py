"""`python -m pdlab.emulator ...`: run an emulated SGLang worker."""

import sys

from pdlab.emulator.cli import main

sys.exit(main())
