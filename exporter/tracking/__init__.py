"""What the exporter knows and how it learns it: configured runs (runs.py), API health
(health.py), every run of a workflow and the counters it implies (history.py, kept per
workflow by book.py and persisted by persistence.py), paging the run list
(discovery.py), and what a scrape fetches (refresh.py)."""
