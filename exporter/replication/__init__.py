"""Several replicas sharing state and the API budget through Redis (state.backend:
redis): every Redis operation (backend.py), leader election, the observation loop and
every replica's mirror (coordinator.py), and how a replica takes its share of the work
(work.py)."""
