"""Benchmarks with their recorded results (bench/results/)."""
