"""Benchmarks of the llmkeys proxy, run by `make bench` (`python -m bench`).

Pieces: `upstream` (a fast fake OpenAI-compatible provider, several SO_REUSEPORT processes),
`loadgen` (drives wrk with a Lua script and parses its JSON summary), `processes` (starts the proxy,
Redis and the fake upstream as real subprocesses, pinned to CPUs, and measures their CPU and RSS),
`stats` (combines repeated runs, states the noise), `scenarios` (what is measured) and `report`
(table and JSON results under bench/results/).
"""
