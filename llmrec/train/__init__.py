"""TMF fine-tuning: ``config.py`` (the recipe), ``curriculum.py`` (Eq. 12-14), ``schedule.py`` (learning rate,
batch plan, precision), ``loop.py`` (the accelerate loop), ``checkpoint.py`` (atomic, resumable checkpoints) and
``memory.py`` (freed memory back to the OS: peak RSS on CPU).

The loop receives its dataset and tables; ``llmrec.pipeline`` builds them.
"""
