"""ksir: k-bit scaling-law experiments for language models.

Data flows one way: config (conf/, Hydra) -> typed job (`ksir.spec.JobSpec`) -> job (`ksir.jobs.execute`) -> result record
(`ksir.records`) -> analysis (`analysis`).
"""

__version__ = "0.1.0"
