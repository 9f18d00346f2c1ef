"""TMF fine-tuning: ``config.py`` (the recipe), ``curriculum.py`` (Eq. 12-14), ``schedule.py`` (learning rate,
batch plan, precision), ``loop.py`` (the accelerate loop) and ``checkpoint.py`` (atomic, resumable checkpoints).

The loop receives its dataset and tables; ``llmrec.pipeline`` builds them.
"""
