"""TMF prompts: ``templates.py`` reads prompts/*.yaml, ``render.py`` renders a sample as segments and slots."""
