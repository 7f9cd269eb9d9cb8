"""Use cases: each step opens a unit of work, reads, decides with domain code, writes, commits."""
