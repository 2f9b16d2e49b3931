"""hvdfast: Horovod ring-allreduce training of torchvision models on DALI input pipelines."""
__version__ = "0.1.0"
