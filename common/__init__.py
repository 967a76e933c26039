"""What every package shares and nothing else: the error root, the retry loop, the SQLite recipe."""
