"""Support for tests of bnnctl and of code built on it (needs hypothesis and torch).

- :mod:`.strategies`: hypothesis strategies for architectures and stacked weights.
- :mod:`.reference`: plain ``torch.nn`` networks written independently of the arch spec,
  the truth that batched computation and symmetries are checked against, and a
  one-model-at-a-time ``torch.optim`` trainer (:func:`~.reference.train_reference`).
- :mod:`.images`: synthetic image datasets and MNIST-format IDX folders (tests and
  benchmarks; no real data here).
- :mod:`.stores`: weights committed to a store as imported models.
"""
