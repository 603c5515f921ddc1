"""Collectors: one per concern, each turning state into fresh metric families on every scrape."""
