"""Engines: everything that writes checkpoints into a store.

- :mod:`.train`: many seeds at once on stacked parameters (:mod:`.config` for its options).
- :mod:`.sample`: posterior chains, committed segment by segment, resumable.
- :mod:`.canonicalize`: symmetry-free copies of stored checkpoints, checked.
- :mod:`.importer`: folders of safetensors / PyTorch state_dicts as a population.
- :mod:`.population`: names, identity, per-member random streams and conflicts, shared.

Each works one block of models at a time, ``block -> rows``, with no shared state but the
store. Engines never import each other.
"""
