"""What shows and measures Tripwire: the demo, the benchmarks and their peers, the scenario library and
the embedded broker and Redis that the first run and the tests use."""
