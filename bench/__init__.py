"""On-demand benchmarks (never timed tests): ``bench/run [name ...]``; see ``bench/README.md``."""
