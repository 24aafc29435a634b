"""`python -m fs2mini.prepare [FLAGS]`: encode a run's corpora into the data cache before training.

The same as `python -m fs2mini.train prepare [FLAGS]` (and `python RECIPE.py prepare` for a recipe):
it takes every training flag, trains or finds the tokenizer, and prepares each split a run with
those flags reads (`fs2mini.prepared`), so that the run itself starts at once.
"""

import sys

from fs2mini.train import main

if __name__ == "__main__":
    main(argv=["prepare", *sys.argv[1:]])
