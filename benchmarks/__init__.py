"""Benchmarks of LCO Classroom's forwarding against baselines, measured in one run.

``python -m benchmarks run`` (later ``lco bench``) starts the server under test
as a subprocess, drives it with a load generator in separate processes
(pre-encoded publishers, subscribers that do not decode) and prints a table of
server CPU, CPU per forwarded packet, loss and join figures side by side with
aiortc's ``MediaRelay``. See ``docs/benchmarks.md``.
"""
