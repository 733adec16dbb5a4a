"""Training, evaluation and publishing of Kronos checkpoints (a thin layer over kronos_core).

- ``kronos-stream train`` (:mod:`trainer.cli`): fine-tune on an archive slice, plain or under
  ``torchrun``; :mod:`trainer.settings` (``KRONOS_TRAIN__*``), :mod:`trainer.data` (windows,
  walk-forward split, samplers), :mod:`trainer.loop` (DDP loop, resumable state),
  :mod:`trainer.gate` (candidate vs champion vs persistence), :mod:`trainer.run` (the job).
- ``python -m trainer.demo_model`` trains the small demo model bundled in daemon/assets/demo-model.
"""
