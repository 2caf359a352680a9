"""The pieces of ``prophrl demo`` (:mod:`lightning_prophrl.pipeline` runs them): its settings (:mod:`.config`), its
stages (:mod:`.stages`; RL inside Prophet in :mod:`.imagined`), its report (:mod:`.report`) and the paired evaluation
of a run's saved policies on more held-out states (:mod:`.evaluate`, also
``python -m lightning_prophrl.demo.evaluate --out OUT --runs ...``)."""
