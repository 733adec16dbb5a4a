"""Training, evaluation and publishing of Kronos checkpoints (a thin layer over kronos_core.training).

`python -m trainer.demo_model` trains the small demo model bundled in daemon/assets/demo-model.
"""
