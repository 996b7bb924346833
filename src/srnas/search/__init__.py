"""Stage 2: compiler-aware architecture and pruning-scheme search (Bayesian optimization or random search).

- :mod:`~srnas.search.candidate`: what a trial chooses (architecture + one pruning scheme per layer);
- :mod:`~srnas.search.quality`: PSNR with inherited supernet weights on fixed validation crops;
- :mod:`~srnas.search.study`: the persisted Optuna study (the only module importing optuna);
- :mod:`~srnas.search.pareto`: the PSNR / latency front, CSV and plot;
- :mod:`~srnas.search.verify`: the choice by measurement (the best admitted candidates measured on the target, best
  PSNR first, the first that fits the budget), shared by both searches;
- :mod:`~srnas.search.run`: the ``search_arch`` stage;
- :mod:`~srnas.search.ratio`: the ``search_ratio`` stage (stage 3's pruning ratios);
- :mod:`~srnas.search.budget`: the ``check_budget`` stage (the fine-tuned final model against the budget).
"""

from srnas.search.candidate import DENSE, ArchCandidate, scheme_granularity
from srnas.search.run import SearchInputs, SearchResult, search_arch

__all__ = ["DENSE", "ArchCandidate", "SearchInputs", "SearchResult", "scheme_granularity", "search_arch"]
