"""Benchmarks for the memory-layer core (MQAR, cost scaling, slot memory)."""
