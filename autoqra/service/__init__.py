"""Library entry points: requests checked before any work, and the functions that run them.

``run_search(SearchRequest(...))`` runs a search and returns its outcome; ``run_trial`` and
``run_priors`` are the counterparts of ``autoqra trial`` and ``autoqra priors``. The CLI's search,
trial and priors commands only turn arguments into these requests and print (``estimate`` loads
nothing and computes its breakdown in the command).
"""
