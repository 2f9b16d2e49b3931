"""The one training path: setup (config -> dist -> data -> model -> optimizer -> Horovod wrapper), resume, fit,
summary. `hvdfast train` runs it as is (train.py), elastic training runs the same steps inside Horovod's elastic
loop (elastic.py), and `hvdfast bench train` times the same engine.train_epoch.
"""
from .fit import FitState, TrainingError, fit  # noqa: F401
from .setup import Job, Plan, plan, seed_everything, setup  # noqa: F401
