"""Goodput: how close keyrelay gets to an oracle that knows every key's limit.

    make bench-goodput      # installs the `compare` extra (LiteLLM, matplotlib), runs, writes docs

Four keys, 16 jobs of 10 sequential calls (one conversation each), on the provider emulator
(real sockets, real clock), under three limit shapes (workloads.py). Systems (systems/): the
oracle, naive rotation, LiteLLM Router (two strategies), keyrelay's pool API and keyrelay's
`agent-run` flows. Each run is one system in a client process of its own (child.py); the emulator
counts what it served and refused (runner.py). docs/benchmarks.md says how to read the results.
"""
