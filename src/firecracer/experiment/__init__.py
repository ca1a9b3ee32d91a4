"""experiment: whole studies from a TOML spec — variants × restore strategies × repetitions.

Modules: ``spec`` (validated TOML), ``plan`` (the run matrix and ``--shard i/n``), ``store`` (SQLite
results, resume, shard merge), ``runner`` (executes runs through a backend, records failures and goes
on), ``backend`` + ``backends/`` (probe guest, JVM image, host replay), ``workingset`` (scattered page sets,
trace page sets, Jaccard), ``attribution`` (restored bytes per NMT category), ``report`` + ``svgplot``
(self-contained HTML). ``docs/experiment.md`` explains how to use them.
"""
