"""Benchmark harness for asgictl: servers, wrk runs, CPU accounting and reports.

Entry point: ``python3 benchmarks/run.py`` (see ``benchmarks/README.md``).
"""
