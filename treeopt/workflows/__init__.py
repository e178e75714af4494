"""End-to-end pipelines built from the API below them (one function each)."""
