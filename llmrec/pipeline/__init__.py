"""The top floor: ``stages.py`` builds or reuses each stage's cached inputs (the only place that does),
``commands.py`` the ``llmrec train`` / ``llmrec infer`` commands, ``run.py`` the whole recipe in order
(``llmrec pipeline``, the quickstart), ``recommender.py`` the Python API for new histories (``llmrec.Recommender``),
``recommend.py`` the ``llmrec recommend`` command and ``cli.py`` the ``llmrec`` dispatcher."""
