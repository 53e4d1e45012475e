"""Adapters from priorshift to other libraries' APIs; each imports its library lazily (an optional extra).

* :mod:`priorshift.integrations.pytorch_ood` — any priorshift detector as a pytorch-ood ``Detector``
  (``pip install "priorshift[ood]"``).
"""
