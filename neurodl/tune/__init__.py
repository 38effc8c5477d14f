"""Hyper-parameter search with Optuna (``neurodl tune``), over any number of processes or machines.

Every trial is a normal run directory trained by the task's library ``train``;
the study lives in an Optuna storage (an SQLite file by default, any RDB URL for
many machines), so a search can be continued and shared. See
:mod:`neurodl.tune.study` and :mod:`neurodl.tune.space`.
"""
