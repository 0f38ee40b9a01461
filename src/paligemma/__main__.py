"""`python -m paligemma ...` (and `torchrun ... -m paligemma finetune ...`): the command line."""

import sys

from .cli.commands import main

sys.exit(main())
