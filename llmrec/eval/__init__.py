"""Evaluation: ``infer.py`` writes a checkpoint's predictions for a split, ``report.py`` turns predictions files
into metric tables (markdown, CSV, JSON) and charts."""
