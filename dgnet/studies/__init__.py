"""Ablation studies: arms x seeds of whole training runs, resumable, summarised over seeds (``python -m dgnet.study``).

:mod:`dgnet.studies.runner` plans and runs the study (the paper's arms built in), :mod:`dgnet.studies.report`
writes its table, JSON and plot; the statistics are :mod:`dgnet.evaluation.stats`. docs/study.md says what the
study asks and why its regime is built as it is.
"""
