"""fs2mini: a minimal, readable PyTorch trainer for sequence-to-sequence translation.

Each component lives in its own module with a frozen config dataclass and a builder:
tokenizer, corpus/data, model, task, optim (optimizer + lr schedule), trainer. `fs2mini.train`
is the command line; `recipes/` shows how to start an experiment from Python.
"""
