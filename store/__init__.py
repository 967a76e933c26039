"""Repositories shared by the stream and the cold path: a SQLite store and a Cosmos DB store."""
