"""Test infrastructure: a headless browser to open what evalstream renders."""
