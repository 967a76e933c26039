"""The metric catalogue: versioned metrics that evaluation policies compute over a window."""
