"""``python -m train TASK --config train/configs/*.yaml``: the training command line, a thin layer over
:func:`ctsr_models.training.run`. Run it as one process or under ``torchrun`` (one process per GPU)."""
