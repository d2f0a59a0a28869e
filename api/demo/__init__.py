"""`keyrelay demo`: the whole system on one machine in about a minute.

A local Prefect server, the provider emulator with short rate-limit windows, a keystore with three
keys and a serve process for `agent-run/default`; more runs than the keys allow at once, shown
live as they rotate, defer and resume; a summary at the end. Everything runs from a temporary
directory and is stopped on exit, Ctrl-C included.

    options.py    the knobs (DemoOptions), cheap to import
    scenario.py   keys, emulator limits, run parameters
    stack.py      start and stop it all (processes.py: child processes, ports, the marker sweep)
    session.py    launch the runs, watch them (observe.py, progress.py), summarize (summary.py)

Import the submodules: this package imports nothing, so `keyrelay --help` stays fast.
"""
