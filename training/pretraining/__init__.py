"""A pretraining run (``python -m training.pretrain``): its data stages, its model and the run itself."""
