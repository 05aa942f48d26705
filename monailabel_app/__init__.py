"""CT Enhance's MONAI Label app: ``monailabel start_server --app monailabel_app --studies DIR`` serves
the infer tasks of ``lib/infers`` (``main.py`` holds the one ``MONAILabelApp`` subclass)."""
